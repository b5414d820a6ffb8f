from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from achievements.awards import Actor, grant_badge
from achievements.cards import cards_for_user
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.expiry import expire_due, remind_due, run_schedule
from achievements.models import Entry, LedgerEntry, Unlock, UserBadge
from achievements.replay import replay_events
from tests.factories import make_images_badge

DAY = timedelta(days=1)


def _post(user, n, when):
    recorded = record_event(user, "image.posted", event_id=f"img-{n}", occurred_at=when)
    return evaluate_event(recorded.event.pk)


@pytest.fixture
def yearly(db):
    """Two photos earn it; it is valid for 30 days."""
    badge = make_images_badge(threshold=2)
    badge.valid_days = 30
    badge.save()
    return badge


def test_an_earning_expires_a_number_of_days_after_the_event_that_earned_it(owner, yearly):
    start = timezone.now() - 40 * DAY
    _post(owner, 1, start)
    _post(owner, 2, start + DAY)
    unlock = Unlock.objects.get(user=owner, badge=yearly)
    assert unlock.expires_at == start + 31 * DAY
    assert UserBadge.objects.get(user=owner, badge=yearly).expires_at == unlock.expires_at
    # Nine days late: the expiry still takes effect at its time.
    report = expire_due()
    assert report.expired == 1
    unlock.refresh_from_db()
    assert (unlock.ending, unlock.ended_at) == ("expired", start + 31 * DAY)
    entry = LedgerEntry.objects.get(kind=Entry.EXPIRED)
    assert (entry.unlock, entry.at, entry.by) == (unlock, start + 31 * DAY, "the expiry schedule")
    standing = UserBadge.objects.get(user=owner, badge=yearly)
    assert (standing.completed_at, standing.expires_at, standing.since) == (
        None,
        None,
        start + 31 * DAY,
    )
    [card] = cards_for_user(owner.pk)
    assert card["expired"] and not card["completed"] and card["current"] == "0"
    assert expire_due().expired == 0  # nothing twice


def test_an_expired_badge_is_earned_again_only_by_activity_after_it_expired(owner, yearly):
    start = timezone.now() - 40 * DAY
    for n in range(4):
        _post(owner, n, start + n * timedelta(hours=1))
    expire_due()
    # The four photos before the expiry count no more, nor does a late one from then.
    _post(owner, 10, start + 2 * DAY)
    assert not Unlock.objects.held().filter(user=owner).exists()
    _post(owner, 11, timezone.now() - timedelta(minutes=2))
    assert not Unlock.objects.held().filter(user=owner).exists()
    _post(owner, 12, timezone.now() - timedelta(minutes=1))
    [again] = Unlock.objects.held().filter(user=owner, badge=yearly)
    assert again.event is not None and again.event.event_id == "img-12"
    assert Unlock.objects.filter(user=owner, badge=yearly).count() == 2  # the old one kept
    assert [k for (k,) in LedgerEntry.objects.order_by("pk").values_list("kind")] == [
        Entry.EARNED,
        Entry.EXPIRED,
        Entry.EARNED,
    ]
    # A replay rebuilds the same: the earnings before the expiry stay history.
    before = list(Unlock.objects.order_by("pk").values_list("pk", "ended_at", "event"))
    replay_events()
    assert list(Unlock.objects.order_by("pk").values_list("pk", "ended_at", "event")) == before
    assert UserBadge.objects.get(user=owner, badge=yearly).completed_at is not None


def test_events_evaluated_while_the_schedule_was_late_count_towards_earning_it_again(
    owner, yearly, pushes, django_capture_on_commit_callbacks
):
    start = timezone.now() - 35 * DAY
    _post(owner, 1, start)
    _post(owner, 2, start)
    # Expired four days ago; two photos since, evaluated before the schedule ran.
    _post(owner, 3, timezone.now() - 3 * DAY)
    _post(owner, 4, timezone.now() - 2 * DAY)
    assert Unlock.objects.held().get(user=owner).event_ids == ["img-2"]
    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        report = expire_due()
    assert (report.expired, report.earned_again) == (1, 1)
    again = Unlock.objects.held().get(user=owner)
    assert again.event is not None and again.event.event_id == "img-4" and not again.silent
    assert again.expires_at == again.event.occurred_at + 30 * DAY
    # The user's open page hears of the new earning (a toast) and gets the card.
    assert any(t["unlock_id"] == again.pk for frame in pushes for t in frame["toasts"])


def test_a_card_shows_expired_from_the_expiry_time_even_before_the_schedule_runs(owner, yearly):
    start = timezone.now() - 31 * DAY - timedelta(hours=1)
    _post(owner, 1, start)
    _post(owner, 2, start)
    [card] = cards_for_user(owner.pk)
    assert card["expired"] and not card["completed"]


def test_a_held_expiring_badge_says_until_when(owner, yearly):
    now = timezone.now()
    _post(owner, 1, now - DAY)
    _post(owner, 2, now - DAY)
    [card] = cards_for_user(owner.pk)
    assert card["completed"] and card["expires_at"] and card["expires_on"]
    assert not card["expired"]


def test_a_reminder_is_sent_once_the_set_days_before_expiry(
    owner, yearly, pushes, django_capture_on_commit_callbacks
):
    yearly.remind_days = 7
    yearly.save()
    _post(owner, 1, timezone.now() - 25 * DAY)
    _post(owner, 2, timezone.now() - 25 * DAY)
    pushes.clear()
    assert remind_due() == 1
    [frame] = pushes
    assert [t["headline"] for t in frame["toasts"]] == ["Expires soon"]
    assert remind_due() == 0  # once
    assert Unlock.objects.get(user=owner).reminded_at is not None


def test_an_expiry_toasts_only_where_the_badge_announces_endings(
    owner, yearly, pushes, django_capture_on_commit_callbacks
):
    _post(owner, 1, timezone.now() - 40 * DAY)
    _post(owner, 2, timezone.now() - 40 * DAY)
    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        run_schedule()
    assert [t for frame in pushes for t in frame["toasts"]] == []
    assert pushes and pushes[-1]["cards"][0]["expired"]

    yearly.announce_endings = True
    yearly.save()
    _post(owner, 3, timezone.now() - 2 * DAY)
    _post(owner, 4, timezone.now() - 2 * DAY)
    UserBadge.objects.filter(user=owner).update(expires_at=timezone.now() - DAY)
    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        run_schedule()
    assert [t["headline"] for frame in pushes for t in frame["toasts"]] == ["Badge expired"]


def test_a_granted_expiring_badge_is_valid_from_the_grant(owner, staff_user, yearly):
    [unlock] = grant_badge(user_id=owner.pk, badge=yearly, reason="r", by=Actor(staff_user.pk))
    assert unlock.expires_at == unlock.unlocked_at + 30 * DAY
    assert UserBadge.objects.get(user=owner).expires_at == unlock.expires_at


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"valid_days": 30, "repeat": "week"}, "valid_days", "earned once, without tiers"),
        (
            {
                "valid_days": 30,
                "tiers": [{"name": "A", "threshold": 2}, {"name": "B", "threshold": 4}],
            },
            "valid_days",
            "earned once, without tiers",
        ),
        ({"remind_days": 3}, "remind_days", "needs the badge to expire"),
        ({"valid_days": 3, "remind_days": 3}, "remind_days", "fewer days ahead"),
    ],
)
def test_bad_expiry_settings_name_the_field(db, fields, field, message):
    badge = make_images_badge(threshold=2)
    for name, value in fields.items():
        setattr(badge, name, value)
    with pytest.raises(ValidationError) as refused:
        badge.full_clean()
    assert message in " ".join(refused.value.message_dict[field])


def test_the_report_counts_revocations_and_expiries_beside_unlocks(owner, second_user, yearly):
    from achievements.awards import revoke_badge
    from achievements.reports import Filters, unlocks_over_time

    _post(owner, 1, timezone.now() - 40 * DAY)
    _post(owner, 2, timezone.now() - 40 * DAY)
    other = make_images_badge(threshold=1)
    recorded = record_event(second_user, "image.posted", event_id="other-1")
    evaluate_event(recorded.event.pk)
    revoke_badge(user_id=second_user.pk, badge=other, reason="r", by=Actor(owner.pk))
    expire_due()
    today = timezone.localdate()
    rows = unlocks_over_time(Filters(start=today - 40 * DAY, end=today, badge=None, unit="day"))
    assert sum(row["unlocks"] for row in rows) == 2
    assert sum(row["revoked"] for row in rows) == 1
    [expired_row] = [row for row in rows if row["expired"]]
    ended = Unlock.objects.get(user=owner, badge=yearly).ended_at
    assert ended is not None and expired_row["period"] == timezone.localdate(ended)


def test_one_failing_standing_does_not_stop_the_others_expiring(
    owner, second_user, yearly, monkeypatch
):
    from achievements import replay

    for user in (owner, second_user):
        for n in (1, 2):
            record = record_event(
                user,
                "image.posted",
                event_id=f"{user.pk}-{n}",
                occurred_at=timezone.now() - 40 * DAY,
            )
            evaluate_event(record.event.pk)
    real = replay.refold

    def refold(user_id, badge, *, silent):
        if user_id == owner.pk:
            raise RuntimeError("broken history")
        return real(user_id, badge, silent=silent)

    monkeypatch.setattr(replay, "refold", refold)
    assert expire_due().expired == 1
    assert Unlock.objects.held().filter(user=owner).exists()  # rolled back, tried next time
    assert not Unlock.objects.held().filter(user=second_user).exists()


def test_a_badge_that_stops_expiring_keeps_what_users_hold(owner, yearly):
    _post(owner, 1, timezone.now() - 40 * DAY)
    _post(owner, 2, timezone.now() - 40 * DAY)
    yearly.valid_days = 0
    yearly.save()
    assert expire_due().expired == 0
    assert Unlock.objects.held().get(user=owner).expires_at is None
    assert UserBadge.objects.get(user=owner).expires_at is None


def test_a_composite_badge_cannot_expire(db):
    from achievements.models import BadgeRequirement

    combo = make_images_badge(threshold=1)
    combo.valid_days = 30
    requirement = BadgeRequirement(badge=combo, kind="composite", threshold=0)
    assert "cannot expire" in combo.rule_problems([requirement])["valid_days"]


def test_the_preview_of_a_rule_change_keeps_expiries_and_revocations(
    owner, second_user, staff_user, yearly
):
    """A preview folds history as a replay does: the events before an expiry do
    not count again, and a badge staff took back is not given back."""
    from achievements.awards import revoke_badge
    from achievements.preview import preview_requirements

    _post(owner, 1, timezone.now() - 40 * DAY)
    _post(owner, 2, timezone.now() - 40 * DAY)
    expire_due()
    for n in (1, 2):
        recorded = record_event(second_user, "image.posted", event_id=f"b-{n}")
        evaluate_event(recorded.event.pk)
    revoke_badge(user_id=second_user.pk, badge=yearly, reason="r", by=Actor(staff_user.pk))
    requirements = list(yearly.requirements.all())
    requirements[0].threshold = 1  # easier: would that give it back to either?
    preview = preview_requirements(yearly, requirements)
    assert preview.newly_qualify == []
