"""Badges held only while their rule holds, end to end: the engine, the schedule, the
ledger, the card, replays and rule changes, on the real database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from achievements import periods
from achievements.awards import Actor, grant_badge
from achievements.cards import cards_for_user
from achievements.engine import evaluate_event, evaluate_events
from achievements.events import record_event
from achievements.expiry import run_schedule
from achievements.models import BadgeRequirement, Entry, LedgerEntry, Unlock, UserBadge
from achievements.replay import replay_events
from achievements.rules import Kind, Scope
from tests.factories import make_images_badge

DAY = timedelta(days=1)


@pytest.fixture
def active(db):
    """Two photos in the last 7 days; held only while that holds."""
    badge = make_images_badge(threshold=2)
    badge.holds_while_met = True
    badge.announce_endings = True
    badge.full_clean()
    badge.save()
    BadgeRequirement.objects.filter(badge=badge).update(scope=Scope.ROLLING, window_days=7)
    return badge


class Clock:
    """The time the code under test reads, set by the test: events are evaluated as
    they happen, and the schedule runs when the test says."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    def __call__(self):
        return self.at or REAL_NOW()


REAL_NOW = timezone.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    return clock


def _record(user, n, when):
    return record_event(user, "image.posted", event_id=f"img-{n}", occurred_at=when).event


def _post(user, n, when, clock=None):
    """Record and evaluate an event; as it happens, when given the clock."""
    if clock is not None:
        clock.at = when
    try:
        return evaluate_event(_record(user, n, when).pk)
    finally:
        if clock is not None:
            clock.at = None


def _midnight_after(moment, days):
    return periods.start_of_day(periods.local_date(moment, "UTC") + days * DAY, "UTC")


def _told(user, badge):
    """The ledger, oldest first: what happened, to which earning, when it ended."""
    return [
        (
            e.kind,
            e.unlock.event.event_id if e.unlock.event else None,
            e.at if e.kind != "earned" else None,
        )
        for e in LedgerEntry.objects.filter(user=user, badge=badge).order_by("unlock_id", "id")
    ]


def test_it_is_lost_at_the_exact_moment_its_rule_stops_and_the_page_is_told(
    owner, active, pushes, clock, django_capture_on_commit_callbacks
):
    start = timezone.now() - 20 * DAY
    _post(owner, 1, start, clock)
    _post(owner, 2, start + DAY, clock)
    unlock = Unlock.objects.get(user=owner, badge=active)
    lost_at = _midnight_after(start, 7)
    assert UserBadge.objects.get(user=owner, badge=active).expires_at == lost_at
    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        report = run_schedule()  # twelve days late
    assert report.lost == 1
    unlock.refresh_from_db()
    assert (unlock.ending, unlock.ended_at) == ("lapsed", lost_at)
    entry = LedgerEntry.objects.get(kind=Entry.LAPSED)
    assert (entry.unlock, entry.at, entry.cause, entry.by) == (unlock, lost_at, "rule", "its rule")
    standing = UserBadge.objects.get(user=owner, badge=active)
    assert (standing.completed_at, standing.expires_at, standing.lapsed_at) == (
        None,
        None,
        lost_at,
    )
    [card] = cards_for_user(owner.pk)
    assert card["lost"] and not card["completed"] and not card["expired"]
    assert [t["headline"] for frame in pushes for t in frame["toasts"]] == ["No longer held"]
    assert run_schedule().lost == 0  # nothing twice


def test_meeting_it_again_earns_it_again_and_the_old_earning_stays_in_the_history(
    owner, active, clock
):
    start = timezone.now() - 30 * DAY
    _post(owner, 1, start, clock)
    _post(owner, 2, start, clock)
    run_schedule()
    _post(owner, 3, timezone.now() - DAY)
    _post(owner, 4, timezone.now())
    assert Unlock.objects.filter(user=owner, badge=active).count() == 2
    again = Unlock.objects.held().get(user=owner, badge=active)
    assert again.event_ids == ["img-4"] and not again.silent
    assert _told(owner, active) == [
        ("earned", "img-2", None),
        ("lapsed", "img-2", _midnight_after(start, 7)),
        ("earned", "img-4", None),
    ]
    [card] = cards_for_user(owner.pk)
    assert card["completed"] and card["keep_until_on"]


def test_a_card_shows_it_lost_from_that_moment_even_before_the_schedule_runs(owner, active, clock):
    start = timezone.now() - 9 * DAY
    _post(owner, 1, start, clock)
    _post(owner, 2, start, clock)
    [card] = cards_for_user(owner.pk)
    assert card["lost"] and not card["completed"]


def test_one_batch_tells_what_one_event_at_a_time_tells(owner, second_user, active, clock):
    """One user's photos evaluated as they happen, with the schedule running an hour
    after each; another's, the same photos, all evaluated at once weeks later."""
    start = timezone.now() - 40 * DAY
    days = [0, 1, 12, 13, 14, 30, 31]
    for n, day in enumerate(days):
        _post(owner, n, start + day * DAY, clock)
        clock.at = start + day * DAY + timedelta(hours=1)
        run_schedule()
        clock.at = None
    run_schedule()
    events = [_record(second_user, 100 + n, start + day * DAY) for n, day in enumerate(days)]
    evaluate_events([e.pk for e in events])
    run_schedule()

    def told(user):
        return [
            (kind, int(event[4:]) % 100 if event else None, at)
            for kind, event, at in _told(user, active)
        ]

    assert told(owner) == told(second_user)
    assert [kind for kind, _, _ in told(owner)] == ["earned", "lapsed"] * 3


def test_a_replay_rebuilds_the_same_history_and_changes_nothing(owner, active, clock):
    start = timezone.now() - 40 * DAY
    for n, day in enumerate([0, 1, 12, 13, 31, 32]):
        _post(owner, n, start + day * DAY, clock)
    run_schedule()
    before = (
        _told(owner, active),
        list(Unlock.objects.values_list("pk", "ended_at", "event_ids")),
    )
    report = replay_events()
    assert (report.newly_earned, report.lost) == ([], [])
    after = (_told(owner, active), list(Unlock.objects.values_list("pk", "ended_at", "event_ids")))
    assert after == before


def test_a_stricter_rule_applied_to_history_takes_it_from_those_it_no_longer_holds_for(
    owner, second_user, active, django_capture_on_commit_callbacks
):
    now = timezone.now()
    for n in range(3):
        _post(owner, n, now - DAY)
    _post(second_user, 10, now - DAY)
    _post(second_user, 11, now - DAY)
    BadgeRequirement.objects.filter(badge=active).update(threshold=3)
    with django_capture_on_commit_callbacks(execute=True):
        report = replay_events(silent=False)
    assert report.lost == [(second_user.pk, active.pk, 0)]
    assert Unlock.objects.held().filter(badge=active).get().user == owner
    lost = LedgerEntry.objects.get(kind=Entry.LAPSED)
    assert lost.user == second_user


def test_staff_grants_are_never_taken_back_by_the_rule(owner, staff_user, active, clock):
    grant_badge(
        user_id=owner.pk, badge=active, reason="Helped at the meetup", by=Actor(staff_user.pk)
    )
    _post(owner, 1, timezone.now() - 20 * DAY, clock)
    run_schedule()
    replay_events()
    assert Unlock.objects.held().get(user=owner, badge=active).granted


def test_tiers_fall_back_to_the_tier_the_rule_still_supports(owner, active, clock):
    active.tiers = [{"name": "Bronze", "threshold": 2}, {"name": "Silver", "threshold": 4}]
    active.full_clean()
    active.save()
    start = timezone.now() - 20 * DAY
    for n in range(2):
        _post(owner, n, start, clock)
    for n in range(2, 4):
        _post(owner, n, start + 3 * DAY, clock)
    assert UserBadge.objects.get(user=owner, badge=active).tier == 2
    run_schedule()
    # Day 0's photos leave the window on day 7 (Silver falls back to Bronze), day
    # 3's on day 10 (Bronze goes too).
    assert [
        (e.tier, e.at) for e in LedgerEntry.objects.filter(kind=Entry.LAPSED).order_by("at")
    ] == [
        (2, _midnight_after(start, 7)),
        (1, _midnight_after(start, 10)),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"repeat": "week"}, "repeatable badge is earned per period"),
        ({"valid_days": 30}, "either expires after some days or holds"),
    ],
)
def test_settings_that_cannot_go_together_are_refused_naming_the_field(db, fields, message):
    badge = make_images_badge(threshold=2)
    badge.holds_while_met = True
    for name, value in fields.items():
        setattr(badge, name, value)
    with pytest.raises(ValidationError) as refused:
        badge.full_clean()
    assert message in " ".join(refused.value.message_dict["holds_while_met"])


def test_a_badge_made_of_other_badges_cannot_hold_only_while_its_rule_holds(db):
    badge = make_images_badge(threshold=2)
    badge.holds_while_met = True
    composite = BadgeRequirement(badge=badge, kind=Kind.COMPOSITE, threshold=1)
    assert "its parts decide" in badge.rule_problems([composite])["holds_while_met"]


def _rule(threshold):
    return json.dumps(
        {
            "requirements": [
                {
                    "kind": "aggregate",
                    "event_type": "image.posted",
                    "aggregation": "count",
                    "threshold": str(threshold),
                    "scope": "rolling",
                    "window_days": 7,
                }
            ]
        }
    )


def test_the_preview_counts_who_would_lose_it_and_applying_asks_to_confirm_that_count(
    admin_client, owner, second_user, active, django_capture_on_commit_callbacks
):
    now = timezone.now()
    for n in range(3):
        _post(owner, n, now - DAY)
    _post(second_user, 10, now - DAY)
    _post(second_user, 11, now - DAY)
    url = f"/admin/achievements/badge/{active.pk}/preview/"
    body = admin_client.post(url, {"rule": _rule(3), "_preview": "Preview"}).content.decode()
    assert "Would lose it (it holds only while its rule holds)</th><td>1</td>" in body
    assert "<td>second</td>" in body
    assert "Take the badge (or a tier) from 1 user" in body

    # Not confirmed: nothing changes, and the page says what to do.
    body = admin_client.post(url, {"rule": _rule(3), "_apply": "Apply"}).content.decode()
    assert "confirm_losses: tick the box to take the badge from 1 user" in body
    assert BadgeRequirement.objects.get(badge=active).threshold == 2
    assert Unlock.objects.held().filter(badge=active).count() == 2

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            url, {"rule": _rule(3), "_apply": "Apply", "confirm_losses": "1"}
        )
    assert response.status_code == 302 and "/reevaluation/" in response["Location"]
    assert BadgeRequirement.objects.get(badge=active).threshold == 3
    [held] = Unlock.objects.held().filter(badge=active)
    assert held.user == owner
    assert LedgerEntry.objects.get(kind=Entry.LAPSED).user == second_user


def test_a_re_evaluation_of_a_badge_that_can_be_taken_away_asks_to_confirm(admin_client, active):
    url = "/admin/achievements/badge/reevaluate/"
    body = admin_client.post(url, {"badge": [active.pk], "notify": "silent"}).content.decode()
    assert "Tick this to re-evaluate badges that can be taken away." in body
    response = admin_client.post(
        url, {"badge": [active.pk], "notify": "silent", "confirm_losses": "on"}
    )
    assert response.status_code == 302


def test_one_evaluation_can_end_an_earning_and_make_it_again(owner, active, clock):
    """The schedule has not run: the batch that brings it back also ends the old one."""
    start = timezone.now() - 20 * DAY
    _post(owner, 1, start, clock)
    _post(owner, 2, start, clock)
    clock.at = start + 10 * DAY
    evaluate_events([_record(owner, 3, clock.at).pk, _record(owner, 4, clock.at).pk])
    clock.at = None
    assert _told(owner, active) == [
        ("earned", "img-2", None),
        ("lapsed", "img-2", _midnight_after(start, 7)),
        ("earned", "img-4", None),
    ]
    assert Unlock.objects.held().get(user=owner, badge=active).event_ids == ["img-4"]
