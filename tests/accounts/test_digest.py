"""The daily email for people who were away (achievements.digest) and its unsubscribe
link (accounts.views.unsubscribe): who gets it, what it tells of, in whose words,
once, again after a failed send, and off with one click without logging in."""

from __future__ import annotations

import re
import smtplib
import threading
from datetime import datetime, timedelta

import pytest
from django.core import mail, signing
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.models import Profile
from accounts.unsubscribe import unsubscribe_token
from achievements import digest
from achievements.digest import digest_moment, send_due_digests
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge, BadgeTranslation, Unlock
from tests.factories import make_badge, make_user


class RefusingBackend(BaseEmailBackend):
    """A mail server that is down: every send raises, as smtplib's does."""

    def send_messages(self, email_messages):  # type: ignore[no-untyped-def]
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


def ask_for_digest(user, *, address: str = "owner@example.com", **profile) -> Profile:
    """The user asked for the digest (with no start: every unseen unlock counts)."""
    user.email = address
    user.save(update_fields=["email"])
    return Profile.objects.update_or_create(
        user=user, defaults={"email_digest": True, "last_digest_at": None, **profile}
    )[0]


def earn(user, key: str, *, name: str = "", category: str = "", hidden: bool = False) -> Badge:
    """A badge of its own event type, earned by `user` with no page open (never seen)."""
    badge = Badge.objects.filter(key=key).first()
    if badge is None:
        badge = make_badge(
            key=key,
            name=name or key.replace("_", " ").title(),
            description=f"What {key} takes.",
            icon="🏅",
            requirements=[{"event_type": f"test.{key}", "threshold": 1}],
        )
        Badge.objects.filter(pk=badge.pk).update(category=category, hidden=hidden)
    evaluate_event(record_event(user, f"test.{key}").event.pk)
    return badge


def test_only_users_who_asked_and_have_an_address_get_one(owner, second_user, mailoutbox):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    earn(second_user, "first_steps")  # never asked
    third = make_user(username="third")
    ask_for_digest(third, address="")  # asked, but gave no address
    earn(third, "first_steps")

    report = send_due_digests()

    assert (report.sent, report.failed) == (1, 0)
    [email] = mailoutbox
    assert email.to == ["owner@example.com"]
    assert email.subject == "You earned a badge while you were away"
    assert "First Steps: Badge unlocked" in email.body
    assert Unlock.objects.get(user=owner).digested_at is not None
    assert Unlock.objects.get(user=second_user).digested_at is None


def test_it_tells_only_of_unlocks_no_page_showed_that_were_meant_to_be_announced_and_are_held(
    owner, staff_user, mailoutbox
):
    from achievements.awards import Actor, grant_badge

    ask_for_digest(owner)
    earn(owner, "missed")
    shown = earn(owner, "shown")
    quiet = earn(owner, "quiet")
    taken_back = earn(owner, "taken_back")
    given = make_badge(key="given", requirements=[{"event_type": "test.given", "threshold": 9}])
    Unlock.objects.filter(badge=shown).update(seen_at=timezone.now())
    Unlock.objects.filter(badge=quiet).update(silent=True)
    Unlock.objects.filter(badge=taken_back).update(ended_at=timezone.now(), ending="revoked")
    grant_badge(user_id=owner.pk, badge=given, reason="Helped out", by=Actor(staff_user.pk))

    send_due_digests()

    [email] = mailoutbox
    assert email.subject == "You earned 2 badges while you were away"
    assert "Missed: Badge unlocked" in email.body
    assert "Given: Badge granted" in email.body
    for left_out in ("Shown", "Quiet", "Taken Back"):
        assert left_out not in email.body


def test_what_the_user_muted_is_left_out_and_not_kept_for_later(owner, mailoutbox):
    ask_for_digest(owner, muted_categories=["Travel"])
    trip = earn(owner, "trip", category="Travel")
    earn(owner, "snapshot", category="Photos")

    send_due_digests()

    [email] = mailoutbox
    assert "Snapshot" in email.body and "Trip" not in email.body
    # Dropped, not postponed (as on the pages): unmuting later does not mail it.
    assert Unlock.objects.get(badge=trip).digested_at is not None
    Profile.objects.filter(user=owner).update(muted_categories=[], mute_all=True)
    earn(owner, "another_snapshot", category="Photos")
    report = send_due_digests(now=timezone.now() + timedelta(days=1))
    assert (report.sent, report.nothing_new) == (0, 1)
    assert len(mailoutbox) == 1


def test_nothing_is_sent_twice_and_nothing_when_there_is_nothing_new(owner, mailoutbox, settings):
    settings.ACCOLADE_DIGEST_HOUR = 8
    ask_for_digest(owner)
    earn(owner, "first_steps")
    now = at("2026-12-08 09:00")

    assert send_due_digests(now=now).sent == 1
    # The same day: not due again, whatever is new.
    earn(owner, "second_steps")
    again = send_due_digests(now=now + timedelta(minutes=5))
    assert (again.sent, again.nothing_new, len(mailoutbox)) == (0, 0, 1)
    # The next day: only what is new.
    assert send_due_digests(now=now + timedelta(days=1)).sent == 1
    assert "Second Steps" in mailoutbox[1].body and "First Steps" not in mailoutbox[1].body
    # And the day after, nothing new: no email.
    quiet = send_due_digests(now=now + timedelta(days=2))
    assert (quiet.sent, quiet.nothing_new, len(mailoutbox)) == (0, 1, 2)


def test_a_run_that_loses_the_claim_to_another_skips_the_user(owner, mailoutbox, monkeypatch):
    """Both runs found the user due; the other one claimed and sent first."""
    ask_for_digest(owner)
    earn(owner, "first_steps")
    claim = digest._claim
    others: list[digest.DigestReport] = []

    def claim_after_another_run(profile, previous, now):  # type: ignore[no-untyped-def]
        if not others:
            monkeypatch.setattr(digest, "_claim", claim)
            others.append(send_due_digests(now=now))
        return claim(profile, previous, now)

    monkeypatch.setattr(digest, "_claim", claim_after_another_run)
    report = send_due_digests()

    assert others[0].sent == 1
    assert (report.sent, report.skipped) == (0, 1)
    assert len(mailoutbox) == 1


@pytest.mark.django_db(transaction=True)
def test_runs_racing_on_postgresql_send_one_email(postgresql_only, owner, mailoutbox):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    now = timezone.now()
    start = threading.Barrier(4)
    reports: list[digest.DigestReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            reports.append(send_due_digests(now=now))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sum(report.sent for report in reports) == 1
    assert len(mail.outbox) == 1


def test_a_failed_send_leaves_the_unlocks_for_the_next_run(owner, mailoutbox, settings, caplog):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"

    report = send_due_digests()

    assert (report.sent, report.failed) == (0, 1)
    assert "was not sent; the next run tries again" in caplog.text
    assert Unlock.objects.get(user=owner).digested_at is None
    # The claim is handed back: the user is due again at once.
    assert Profile.objects.get(user=owner).last_digest_at is None

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    earn(owner, "second_steps")
    assert send_due_digests().sent == 1
    [email] = mailoutbox
    assert "First Steps" in email.body and "Second Steps" in email.body


class RefusingTheAddressBackend(BaseEmailBackend):
    """A mail server that answers, and refuses the address (`code`: for good, or for now)."""

    code = 550

    def send_messages(self, email_messages):  # type: ignore[no-untyped-def]
        recipients = {
            to: (self.code, b"5.1.1 No such user") for m in email_messages for to in m.to
        }
        raise smtplib.SMTPRecipientsRefused(recipients)


def test_an_address_refused_for_good_is_tried_again_tomorrow_not_every_hour(
    owner, mailoutbox, settings, monkeypatch
):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    settings.EMAIL_BACKEND = f"{__name__}.RefusingTheAddressBackend"
    settings.ACCOLADE_DIGEST_HOUR = 8
    now = at("2026-12-08 09:00")

    assert send_due_digests(now=now).failed == 1
    assert Unlock.objects.get(user=owner).digested_at is None
    assert send_due_digests(now=now + timedelta(hours=1)).failed == 0  # not due again today
    # "Try later" (a 4xx) is tried at the next run.
    monkeypatch.setattr(RefusingTheAddressBackend, "code", 450)
    assert send_due_digests(now=now + timedelta(days=1)).failed == 1
    assert send_due_digests(now=now + timedelta(days=1, hours=1)).failed == 1
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert send_due_digests(now=now + timedelta(days=1, hours=2)).sent == 1
    assert "First Steps" in mailoutbox[0].body


def test_the_hourly_task_sends_what_is_due(owner, mailoutbox, settings):
    from achievements.tasks import send_digests_task

    assert settings.CELERY_BEAT_SCHEDULE["send-digests"] == {
        "task": "achievements.send_digests",
        "schedule": 3600.0,
    }
    assert send_digests_task.name == "achievements.send_digests"
    ask_for_digest(owner)
    earn(owner, "first_steps")
    assert send_digests_task() == 1
    assert len(mailoutbox) == 1


def test_a_french_user_gets_it_in_french_with_staffs_words(owner, mailoutbox):
    ask_for_digest(owner, language="fr", time_zone="Europe/Paris")
    badge = earn(owner, "five_places", name="5 Places Visited")
    BadgeTranslation.objects.create(
        badge=badge, language="fr", name="5 lieux visités", description="Visitez cinq lieux."
    )
    earn(owner, "first_steps")

    send_due_digests()

    [email] = mailoutbox
    assert email.subject == "Vous avez gagné 2 badges pendant votre absence"
    assert "5 lieux visités : Badge débloqué" in email.body
    assert "Visitez cinq lieux." in email.body
    html, kind = email.alternatives[0]
    assert kind == "text/html" and '<html lang="fr">' in html and "5 lieux visités" in html


def test_the_browser_language_serves_when_the_user_chose_none(owner, mailoutbox):
    ask_for_digest(owner, browser_language="fr")
    earn(owner, "first_steps")
    send_due_digests()
    assert mailoutbox[0].subject == "Vous avez gagné un badge pendant votre absence"


def test_a_hidden_badge_the_user_earned_is_named(owner, mailoutbox):
    ask_for_digest(owner)
    earn(owner, "night_owl", name="Night Owl", hidden=True)
    send_due_digests()
    [email] = mailoutbox
    assert "Night Owl" in email.body and "Mystery badge" not in email.body


def test_a_long_list_is_cut_short_and_counted(owner, mailoutbox, monkeypatch):
    monkeypatch.setattr(digest, "LISTED", 2)
    ask_for_digest(owner)
    for key in ("one", "two", "three"):
        earn(owner, key)
    send_due_digests()
    [email] = mailoutbox
    assert email.subject == "You earned 3 badges while you were away"
    assert "Three" not in email.body and "And 1 more on your badge page." in email.body
    assert Unlock.objects.filter(user=owner, digested_at__isnull=True).count() == 0


def test_the_email_links_to_the_site_and_offers_one_click_unsubscribe(owner, mailoutbox, settings):
    settings.ACCOLADE_SITE_URL = "https://badges.example.com"
    ask_for_digest(owner)
    earn(owner, "first_steps")
    send_due_digests()
    [email] = mailoutbox
    token = unsubscribe_token(owner.pk)
    link = f"https://badges.example.com/accounts/unsubscribe/{token}/"
    assert email.extra_headers["List-Unsubscribe"] == f"<{link}>"
    assert email.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://badges.example.com/badges/" in email.body and link in email.body
    html = email.alternatives[0][0]
    assert 'href="https://badges.example.com/badges/"' in html and link in html


def test_the_digest_comes_after_the_digest_hour_of_the_users_own_clock(
    owner, mailoutbox, settings
):
    settings.ACCOLADE_DIGEST_HOUR = 8
    # 09:00 in New York the day before: yesterday's digest was made.
    ask_for_digest(owner, time_zone="America/New_York", last_digest_at=at("2026-12-07 14:00"))
    earn(owner, "first_steps")

    assert send_due_digests(now=at("2026-12-08 12:30")).sent == 0  # 07:30 there
    assert send_due_digests(now=at("2026-12-08 13:05")).sent == 1  # 08:05 there
    earn(owner, "second_steps")
    assert send_due_digests(now=at("2026-12-08 23:00")).sent == 0  # 18:00: done today
    # A missed hour is made up by the next run, even before the hour (the beat was down).
    assert send_due_digests(now=at("2026-12-10 04:00")).sent == 1  # 23:00 on the 9th


def test_a_digest_made_up_before_the_hour_is_that_days_one(owner, mailoutbox, settings):
    settings.ACCOLADE_DIGEST_HOUR = 8
    # The last digest two days ago; beat was down until 07:59 UTC today.
    ask_for_digest(owner, last_digest_at=at("2026-12-06 08:05"))
    earn(owner, "first_steps")
    assert send_due_digests(now=at("2026-12-08 07:59")).sent == 1  # the missed one
    earn(owner, "second_steps")
    assert send_due_digests(now=at("2026-12-08 08:00")).sent == 0  # not a second today
    assert send_due_digests(now=at("2026-12-09 08:00")).sent == 1  # tomorrow's
    assert len(mailoutbox) == 2


def test_the_digest_hour_is_found_across_a_change_of_clocks():
    # Paris moves from UTC+2 to UTC+1 on 2026-10-25.
    assert digest_moment(at("2026-10-24 07:00"), "Europe/Paris", 8) == at("2026-10-24 06:00")
    assert digest_moment(at("2026-10-25 07:30"), "Europe/Paris", 8) == at("2026-10-25 07:00")
    assert digest_moment(at("2026-10-25 06:30"), "Europe/Paris", 8) == at("2026-10-24 06:00")
    # An unknown zone counts as UTC rather than failing the run.
    assert digest_moment(at("2026-10-25 06:30"), "Mars/Olympus", 8) == at("2026-10-24 08:00")


def test_asking_for_it_starts_it_from_now_not_with_everything_unseen(client, owner, mailoutbox):
    earn(owner, "long_ago")
    client.force_login(owner)
    client.post(
        "/accounts/settings/",
        {"animate": "on", "email_digest": "on", "email": "owner@example.com"},
    )
    profile = Profile.objects.get(user=owner)
    assert profile.email_digest and profile.digest_since is not None
    tomorrow = timezone.now() + timedelta(days=1)
    assert send_due_digests(now=tomorrow).sent == 0
    earn(owner, "just_now")
    assert send_due_digests(now=tomorrow + timedelta(days=1)).sent == 1
    assert "Just Now" in mailoutbox[0].body and "Long Ago" not in mailoutbox[0].body


def test_the_command_says_what_it_would_send_and_then_sends_it(owner, mailoutbox):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    out = _command("--dry-run")
    assert "owner <owner@example.com>: 1 unlock(s), in en" in out
    assert "Would send 1 digest(s)" in out
    assert mailoutbox == [] and Profile.objects.get(user=owner).last_digest_at is None
    assert "Sent 1 digest(s)" in _command()
    assert len(mailoutbox) == 1
    assert "Sent 0 digest(s)" in _command()


def test_the_command_fails_when_a_digest_could_not_be_sent(owner, settings):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    with pytest.raises(CommandError, match="1 digest"):
        _command()


def test_a_site_sending_real_email_is_told_to_set_its_address(settings):
    settings.EMAIL_HOST = "smtp.example.com"
    settings.ACCOLADE_SITE_URL = ""
    [warning] = digest.check_site_url()
    assert warning.id == "accolade.W001" and "ACCOLADE_SITE_URL" in warning.msg
    settings.ACCOLADE_SITE_URL = "https://badges.example.com"
    assert digest.check_site_url() == []


# --- unsubscribing, without logging in ---------------------------------------


def _unsubscribe_url(user) -> str:
    return f"/accounts/unsubscribe/{unsubscribe_token(user.pk)}/"


def test_opening_the_link_asks_and_changes_nothing(client, owner):
    ask_for_digest(owner)
    response = client.get(_unsubscribe_url(owner))
    body = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Stop the daily email?</h1>" in body
    assert f'<form method="post" action="{_unsubscribe_url(owner)}">' in body
    assert Profile.objects.get(user=owner).email_digest is True


def test_the_button_turns_it_off(client, owner):
    ask_for_digest(owner)
    response = client.post(_unsubscribe_url(owner))
    assert response.status_code == 200
    assert "You will get no more daily emails" in response.content.decode()
    assert Profile.objects.get(user=owner).email_digest is False
    # The link again: it says so, and offers no button.
    again = client.get(_unsubscribe_url(owner)).content.decode()
    assert "The daily email is off" in again and "<form" not in again.split("<main")[1]


def test_a_mail_programs_one_click_unsubscribe_needs_no_csrf_token(owner, mailoutbox):
    ask_for_digest(owner)
    earn(owner, "first_steps")
    send_due_digests()
    link = re.fullmatch(r"<https?://[^/]+(/.+)>", mailoutbox[0].extra_headers["List-Unsubscribe"])
    assert link is not None
    mail_program = Client(enforce_csrf_checks=True)
    response = mail_program.post(link.group(1), {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert Profile.objects.get(user=owner).email_digest is False


@pytest.mark.parametrize(
    "token",
    [
        "tampered",
        "cut-short",
        "another-user",
        "another-purpose",
        "x" * 500,
    ],
)
def test_a_bad_link_is_a_400_that_says_so_and_changes_nothing(client, owner, second_user, token):
    ask_for_digest(owner)
    good = unsubscribe_token(owner.pk)
    value, signature = good.split(".")
    bad = {
        "tampered": f"{second_user.pk}.{signature}",
        "cut-short": good[:-4],
        "another-user": f"{value}.{unsubscribe_token(second_user.pk).split('.')[1]}",
        "another-purpose": signing.Signer(salt="elsewhere", sep=".").sign(str(owner.pk)),
    }.get(token, token)
    for response in (
        client.get(f"/accounts/unsubscribe/{bad}/"),
        client.post(f"/accounts/unsubscribe/{bad}/"),
    ):
        assert response.status_code == 400
        body = response.content.decode()
        assert "This link does not work" in body and "Nothing was changed." in body
    assert Profile.objects.get(user=owner).email_digest is True


def _command(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("send_digests", *args, stdout=out)
    return out.getvalue()


def at(moment: str) -> datetime:
    return datetime.fromisoformat(f"{moment}+00:00")
