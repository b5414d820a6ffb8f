"""The daily email for people who were away: what they earned that no page showed them.

A user who asked for it in their settings (`Profile.email_digest`) and has an
address gets at most one email a local day, listing their unlocks that no
page has shown (`seen_at` empty), that were meant to be announced (not
silent), that they still hold and that no earlier digest told of, from the
moment they asked on (`digest_since`). They are worded as the toasts they
missed (the same cards and headlines: staff's translations, tier names,
"Badge granted"), in the user's language and time zone, without what they
muted. A hidden badge they earned is named, as their badge page names it
to them. Nothing new, no email.

When: celery beat runs `send_due_digests` every hour (the embedded sweeper
does in the embedded mode). A user's digest comes due at
ACCOLADE_DIGEST_HOUR on their own clock (`Profile.time_zone`) and stays due
until one is made, so a run that was missed is made up by the next, and a
daily cron job at any hour serves every time zone.

Nothing twice, nothing lost:

- A run claims a user's digest by moving `last_digest_at` from the value it
  read to its own moment, in one conditional UPDATE (healthchecks' claim):
  of two runs at once, one wins and the other skips the user.
- The unlocks are marked `digested_at` only once the mail server has taken
  the email. If sending fails, the claim is handed back and nothing is
  marked: the next run tries again, with the same unlocks and any newer. An
  address the server refuses for good (a 5xx for it) keeps the day claimed:
  tried again tomorrow rather than every hour, the unlocks still unmarked.
- A process killed between the claim and the send leaves the day claimed
  and the unlocks unmarked: they come in the next day's digest. Killed after
  the mail server took the email and before the mark, the next digest tells
  of them again: a duplicate rather than a loss, as a mail server cannot
  take part in a database transaction.
"""

from __future__ import annotations

import logging
import smtplib
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.formats import date_format
from django.utils.translation import ngettext

from accounts.models import Profile
from accounts.unsubscribe import unsubscribe_token
from achievements.cards import cards_for_user, reader, split_muted, toasts_for
from achievements.models import Unlock

logger = logging.getLogger(__name__)

# Unlocks one email lists; it counts the rest ("and 3 more on your badge page").
LISTED = 20
# Users read per query while sending.
CHUNK = 200
# Links in the embedded mode, where ACCOLADE_SITE_URL is usually unset.
LOCAL_SITE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Planned:
    """A digest a dry run would send."""

    username: str
    address: str
    language: str
    unlocks: int


@dataclass
class DigestReport:
    sent: int = 0
    nothing_new: int = 0  # due, with nothing to tell (or only what the user muted)
    failed: int = 0  # not sent: tried again at the next run (a refused address: tomorrow)
    skipped: int = 0  # another run had claimed them first
    planned: list[Planned] = field(default_factory=list)


@dataclass(frozen=True)
class Digest:
    """One user's digest: every unlock it accounts for (what they muted included),
    and the email, if anything is left to tell."""

    unlock_ids: list[int]
    email: EmailMultiAlternatives | None = None
    language: str = ""
    told: int = 0


def site_url() -> str:
    return settings.ACCOLADE_SITE_URL or LOCAL_SITE_URL


def check_site_url(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A site that sends real email needs its address for the digest's links."""
    if settings.EMAIL_HOST and not settings.ACCOLADE_SITE_URL:
        return [
            checks.Warning(
                f"ACCOLADE_SITE_URL is not set: the daily digest's links (the badge page, "
                f"unsubscribe) would point at {LOCAL_SITE_URL}.",
                hint="Set it to the site's public address, such as https://badges.example.com.",
                id="accolade.W001",
            )
        ]
    return []


def digest_moment(now: datetime, time_zone: str, hour: int) -> datetime:
    """When the user's current digest came due: the latest `hour`:00 of their own
    clock at or before `now` (today's, or before that hour yesterday's)."""
    local = now.astimezone(_zone(time_zone))
    moment = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if moment > local:  # the same zone: compared, and moved a day, on the wall clock
        moment = (local - timedelta(days=1)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return moment.astimezone(UTC)


def due_profiles(now: datetime) -> QuerySet[Profile]:
    """The profiles whose digest is due at `now`: asked for, with an address, an
    active user, and none made since their latest digest hour."""
    wanting = Profile.objects.filter(email_digest=True, user__is_active=True).exclude(
        user__email=""
    )
    zones = set(wanting.order_by().values_list("time_zone", flat=True).distinct())
    hour = int(settings.ACCOLADE_DIGEST_HOUR)
    due = Q(pk__in=[])
    for zone in zones:
        # Due since the latest digest hour, and at most one a local day: one sent
        # late, before today's hour (beat was down), is today's.
        before = min(digest_moment(now, zone, hour), _local_midnight(now, zone))
        due |= Q(time_zone=zone) & (Q(last_digest_at__isnull=True) | Q(last_digest_at__lt=before))
    return wanting.filter(due)


def send_due_digests(*, now: datetime | None = None, dry_run: bool = False) -> DigestReport:
    """Make the digests due now: one email to each user with something new.

    1. Take the due profiles (`due_profiles`), a chunk at a time.
    2. Claim each user's digest (`_claim`); a run that loses the claim skips them.
    3. Read their unlocks awaiting a digest and word them (`compose`).
    4. Send the email, if anything is left to tell. If that fails, hand the
       claim back and mark nothing: the next run tries again. (An address the
       mail server refuses for good keeps the claim: tried again tomorrow,
       not every hour.)
    5. Mark every unlock read as digested: what the user muted is dropped,
       not postponed, as it is on their pages.

    With `dry_run` nothing is claimed, sent or marked; the report lists what
    would be sent.
    """
    now = now or timezone.now()
    report = DigestReport()
    due = list(due_profiles(now).order_by("pk").values_list("pk", flat=True))
    mailer = _Mailer()
    try:
        for start in range(0, len(due), CHUNK):
            chunk = Profile.objects.filter(pk__in=due[start : start + CHUNK])
            for profile in chunk.select_related("user").order_by("pk"):
                _digest_one(profile, now, report, mailer, dry_run=dry_run)
    finally:
        mailer.close()
    return report


def _digest_one(
    profile: Profile, now: datetime, report: DigestReport, mailer: _Mailer, *, dry_run: bool
) -> None:
    """Steps 2 to 5 of send_due_digests for one user."""
    previous = profile.last_digest_at
    if not dry_run and not _claim(profile, previous, now):
        report.skipped += 1
        return
    try:
        digest = compose(profile)
        if digest.email is not None and not dry_run:
            mailer.send(digest.email)
    except smtplib.SMTPRecipientsRefused as refused:
        # A 5xx for the address is the server's last word on it today; a 4xx is "try later".
        for_good = all(code >= 500 for code, _ in refused.recipients.values())
        if not for_good:
            _hand_back(profile, previous, now)
        logger.warning(
            "The mail server refused the daily digest of user %s (%s); it is tried again %s",
            profile.user_id,
            refused.recipients,
            "tomorrow" if for_good else "at the next run",
        )
        report.failed += 1
        return
    except Exception:
        logger.exception(
            "The daily digest of user %s was not sent; the next run tries again",
            profile.user_id,
        )
        report.failed += 1
        if not dry_run:
            _hand_back(profile, previous, now)
        mailer.close()  # a broken session is not reused
        return
    if digest.email is None:
        report.nothing_new += 1
    elif dry_run:
        user = profile.user
        report.planned.append(
            Planned(user.get_username(), user.email, digest.language, digest.told)
        )
    else:
        report.sent += 1
    if not dry_run:
        Unlock.objects.mark_digested(digest.unlock_ids, now)


class _Mailer:
    """One session with the mail server for a run, opened for its first email and
    opened anew after a failure."""

    def __init__(self) -> None:
        self.connection: Any = None

    def send(self, email: EmailMultiAlternatives) -> None:
        if self.connection is None:
            self.connection = get_connection()
            self.connection.open()
        email.connection = self.connection
        email.send()

    def close(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            try:
                connection.close()
            except Exception:
                logger.warning("Closing the mail server's session failed", exc_info=True)


def _claim(profile: Profile, previous: datetime | None, now: datetime) -> bool:
    """Own this user's digest for the day: True for exactly one of the runs that
    read `previous`. False too if they turned it off meanwhile."""
    return (
        Profile.objects.filter(pk=profile.pk, email_digest=True, last_digest_at=previous).update(
            last_digest_at=now
        )
        == 1
    )


def _hand_back(profile: Profile, previous: datetime | None, now: datetime) -> None:
    """Undo a claim whose email did not go, so the user is due again."""
    Profile.objects.filter(pk=profile.pk, last_digest_at=now).update(last_digest_at=previous)


def compose(profile: Profile) -> Digest:
    """The user's digest: their unlocks awaiting one, worded as their toasts, in
    their language and time zone, without what they muted. Reads only."""
    user = profile.user
    rows = list(
        Unlock.objects.awaiting_digest(user.pk, profile.digest_since)
        .order_by("unlocked_at", "pk")
        .values_list("pk", "badge_id", "tier", "period", "unlocked_at")
    )
    unlock_ids = [pk for pk, *_ in rows]
    if not rows:
        return Digest(unlock_ids)
    settings_of = reader(user.pk)
    language = settings_of.language or settings.LANGUAGE_CODE
    with translation.override(language), timezone.override(_zone(profile.time_zone)):
        cards = cards_for_user(user.pk, badge_ids={badge_id for _, badge_id, *_ in rows})
        toasts = toasts_for(
            user.pk, [(pk, badge, tier, period) for pk, badge, tier, period, _ in rows], cards
        )
        toasts, _, _ = split_muted(toasts, settings_of.muting)
        if not toasts:
            return Digest(unlock_ids)
        when = {pk: at for pk, *_, at in rows}
        email = _email(profile, toasts, when, language)
    return Digest(unlock_ids, email, language, len(toasts))


def _email(
    profile: Profile,
    toasts: list[dict[str, Any]],
    when: dict[int, datetime],
    language: str,
) -> EmailMultiAlternatives:
    """The email, plain text with an HTML alternative, and the headers that let a
    mail program offer one-click unsubscribe (RFC 8058)."""
    user = profile.user
    base = site_url()
    unsubscribe_url = base + reverse("accounts:unsubscribe", args=[unsubscribe_token(user.pk)])
    context = {
        "language": language,
        "name": profile.public_name or user.get_username(),
        "total": len(toasts),
        "items": [
            {
                "icon": toast["card"]["icon"],
                "name": toast["card"]["name"],
                "headline": toast["headline"],
                "description": toast["card"]["description"],
                "on": date_format(timezone.localtime(when[toast["unlock_id"]]), "DATE_FORMAT"),
            }
            for toast in toasts[:LISTED]
        ],
        "more": max(0, len(toasts) - LISTED),
        "badges_url": base + reverse("achievements:badges"),
        "settings_url": base + reverse("accounts:settings"),
        "unsubscribe_url": unsubscribe_url,
    }
    subject = ngettext(
        "You earned a badge while you were away",
        "You earned %(count)d badges while you were away",
        len(toasts),
    ) % {"count": len(toasts)}
    email = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("achievements/digest_email.txt", context),
        to=[user.email],
        headers={
            "List-Unsubscribe": f"<{unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            # Automatic: an out-of-office reply should not answer it (RFC 3834).
            "Auto-Submitted": "auto-generated",
        },
    )
    email.attach_alternative(
        render_to_string("achievements/digest_email.html", context), "text/html"
    )
    return email


def _local_midnight(now: datetime, time_zone: str) -> datetime:
    """The start of the user's current day, in UTC."""
    local = now.astimezone(_zone(time_zone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")
