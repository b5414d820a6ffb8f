from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from achievements.awards import Actor, AwardRefused, grant_badge, revoke_badge
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Entry, LedgerEntry, Unlock, UserBadge
from achievements.replay import replay_events
from tests.factories import make_badge, make_images_badge, make_places_badge


def _post(user, n, *, when=None):
    recorded = record_event(user, "image.posted", event_id=f"img-{n}", occurred_at=when)
    return evaluate_event(recorded.event.pk)


def _ledger(user, badge):
    return list(
        LedgerEntry.objects.filter(user=user, badge=badge)
        .order_by("at", "pk")
        .values_list("kind", "tier", "period", "reason")
    )


def test_an_earning_is_an_entry_of_the_ledger_with_its_rule_version_and_events(owner):
    badge = make_images_badge(threshold=2)
    _post(owner, 1)
    _post(owner, 2)
    [entry] = LedgerEntry.objects.filter(user=owner, badge=badge)
    unlock = Unlock.objects.get(user=owner, badge=badge)
    assert (entry.kind, entry.unlock, entry.at) == (Entry.EARNED, unlock, unlock.unlocked_at)
    assert entry.event_ids == ["img-2"] and entry.version_id == unlock.version_id
    assert entry.by == "its rule"


def test_ledger_entries_cannot_be_changed(owner):
    badge = make_images_badge(threshold=1)
    _post(owner, 1)
    entry = LedgerEntry.objects.get(user=owner, badge=badge)
    entry.reason = "edited"
    with pytest.raises(ValueError, match="immutable"):
        entry.save()


def test_staff_grant_a_badge_with_a_reason_and_the_ledger_says_who(
    owner, staff_user, pushes, django_capture_on_commit_callbacks
):
    badge = make_images_badge(threshold=10)
    with django_capture_on_commit_callbacks(execute=True):
        [unlock] = grant_badge(
            user_id=owner.pk, badge=badge, reason="Won the photo contest", by=Actor(staff_user.pk)
        )
    assert unlock.granted and unlock.is_held
    standing = UserBadge.objects.get(user=owner, badge=badge)
    assert standing.completed_at == unlock.unlocked_at
    [entry] = LedgerEntry.objects.filter(user=owner, badge=badge)
    assert (entry.kind, entry.actor, entry.reason) == (
        Entry.GRANTED,
        staff_user,
        "Won the photo contest",
    )
    assert entry.by == str(staff_user)
    # The open page gets the card and a toast, as for an earning.
    [frame] = pushes
    assert [(t["unlock_id"], t["headline"]) for t in frame["toasts"]] == [
        (unlock.pk, "Badge granted")
    ]
    assert frame["cards"][0]["completed"]


def test_a_granted_badge_is_not_earned_again_by_the_rule(owner, staff_user):
    badge = make_images_badge(threshold=2)
    grant_badge(user_id=owner.pk, badge=badge, reason="early tester", by=Actor(staff_user.pk))
    _post(owner, 1)
    _post(owner, 2)
    assert Unlock.objects.filter(user=owner, badge=badge).count() == 1
    # A replay keeps it, and does not call it "no longer qualifying".
    report = replay_events()
    assert Unlock.objects.held().filter(user=owner, badge=badge, granted=True).count() == 1
    assert not report.no_longer_qualifying


def test_a_revoked_badge_keeps_its_history_and_the_rule_does_not_award_it_again(
    owner, staff_user, pushes, django_capture_on_commit_callbacks
):
    badge = make_images_badge(threshold=2)
    _post(owner, 1)
    _post(owner, 2)
    with django_capture_on_commit_callbacks(execute=True):
        [ended] = revoke_badge(
            user_id=owner.pk, badge=badge, reason="Posted stolen photos", by=Actor(staff_user.pk)
        )
    assert ended.ending == "revoked" and not ended.is_held
    standing = UserBadge.objects.get(user=owner, badge=badge)
    assert (standing.completed_at, standing.tier, standing.withheld) == (None, 0, [""])
    assert _ledger(owner, badge) == [
        (Entry.EARNED, 0, "", ""),
        (Entry.REVOKED, 0, "", "Posted stolen photos"),
    ]
    [frame] = pushes
    assert not frame["cards"][0]["completed"] and frame["cards"][0]["revoked"]
    assert frame["toasts"] == []

    # New events still count, but do not bring it back; nor does a replay.
    _post(owner, 3)
    replay_events()
    assert not Unlock.objects.held().filter(user=owner, badge=badge).exists()
    assert Unlock.objects.filter(user=owner, badge=badge).count() == 1
    assert UserBadge.objects.get(user=owner, badge=badge).current_value == 2  # 3 of 2, shown 2

    # A grant lifts it.
    grant_badge(user_id=owner.pk, badge=badge, reason="Appeal upheld", by=Actor(staff_user.pk))
    standing.refresh_from_db()
    assert standing.withheld == [] and standing.completed_at is not None
    assert [k for k, *_ in _ledger(owner, badge)] == [
        Entry.EARNED,
        Entry.REVOKED,
        Entry.GRANTED,
    ]


def test_revoking_a_tier_keeps_the_tiers_below_and_withholds_it_and_those_above(owner, staff_user):
    badge = make_images_badge(threshold=1)
    badge.tiers = [
        {"name": "Bronze", "threshold": 1},
        {"name": "Silver", "threshold": 2},
        {"name": "Gold", "threshold": 4},
    ]
    badge.save()
    for n in range(2):
        _post(owner, n)
    assert UserBadge.objects.get(user=owner, badge=badge).tier == 2
    revoke_badge(
        user_id=owner.pk, badge=badge, tier=2, reason="Duplicates", by=Actor(staff_user.pk)
    )
    standing = UserBadge.objects.get(user=owner, badge=badge)
    assert standing.tier == 1 and standing.completed_at is not None
    for n in range(2, 5):
        _post(owner, n)
    assert list(
        Unlock.objects.held().filter(user=owner, badge=badge).values_list("tier", flat=True)
    ) == [1]

    # A grant of Gold gives Silver and Gold, both marked granted.
    granted = grant_badge(
        user_id=owner.pk, badge=badge, tier=3, reason="Reviewed", by=Actor(staff_user.pk)
    )
    assert [(u.tier, u.granted) for u in granted] == [(2, True), (3, True)]
    assert UserBadge.objects.get(user=owner, badge=badge).tier == 3


def test_a_repeatable_badge_is_revoked_one_period_at_a_time(owner, staff_user):
    badge = make_images_badge(threshold=1)
    badge.repeat = "day"
    badge.save()
    badge.requirements.update(scope="day")
    today = timezone.now()
    yesterday = today - timedelta(days=1)
    _post(owner, 1, when=yesterday)
    _post(owner, 2, when=today)
    periods = sorted(
        Unlock.objects.filter(user=owner, badge=badge).values_list("period", flat=True)
    )
    assert len(periods) == 2
    revoke_badge(
        user_id=owner.pk, badge=badge, period=periods[0], reason="Bot", by=Actor(staff_user.pk)
    )
    assert list(
        Unlock.objects.held().filter(user=owner, badge=badge).values_list("period", flat=True)
    ) == [periods[1]]
    # Another event that day does not earn it again, nor does a replay.
    _post(owner, 3, when=yesterday + timedelta(seconds=1))
    replay_events()
    assert Unlock.objects.held().filter(user=owner, badge=badge).count() == 1
    assert UserBadge.objects.get(user=owner, badge=badge).completed_at is not None


@pytest.mark.parametrize(
    ("call", "kwargs", "field", "message"),
    [
        (grant_badge, {"reason": "  "}, "reason", "Give a reason"),
        (grant_badge, {"reason": "x" * 501}, "reason", "500 characters"),
        (grant_badge, {"reason": "ok", "tier": 2}, "tier", "has no tiers"),
        (grant_badge, {"reason": "ok", "period": "2026-12-01"}, "period", "earned once"),
        (revoke_badge, {"reason": "ok"}, "badge", "does not hold"),
        (revoke_badge, {"reason": ""}, "reason", "Give a reason"),
        (revoke_badge, {"reason": "ok", "tier": 1}, "tier", "has no tiers"),
    ],
)
def test_bad_grants_and_revocations_name_the_field_and_write_nothing(
    owner, staff_user, call, kwargs, field, message
):
    badge = make_images_badge(threshold=5)
    with pytest.raises(AwardRefused, match=message) as refused:
        call(user_id=owner.pk, badge=badge, by=Actor(staff_user.pk), **kwargs)
    assert refused.value.field == field
    assert not Unlock.objects.exists() and not LedgerEntry.objects.exists()
    assert not UserBadge.objects.filter(completed_at__isnull=False).exists()


def test_granting_what_the_user_holds_is_refused(owner, staff_user):
    badge = make_images_badge(threshold=1)
    _post(owner, 1)
    with pytest.raises(AwardRefused, match="already holds") as refused:
        grant_badge(user_id=owner.pk, badge=badge, reason="again", by=Actor(staff_user.pk))
    assert refused.value.field == "badge"
    assert LedgerEntry.objects.count() == 1


def test_inactive_and_out_of_segment_badges_cannot_be_granted(owner, staff_user):
    from django.contrib.auth.models import Group

    inactive = make_badge(
        key="old", requirements=[{"event_type": "image.posted", "threshold": 1}], is_active=False
    )
    with pytest.raises(AwardRefused, match="inactive"):
        grant_badge(user_id=owner.pk, badge=inactive, reason="r", by=Actor(staff_user.pk))
    members = make_places_badge(threshold=2)
    members.segment_group = Group.objects.create(name="Members")
    members.save()
    with pytest.raises(AwardRefused, match="segment"):
        grant_badge(user_id=owner.pk, badge=members, reason="r", by=Actor(staff_user.pk))
    assert not Unlock.objects.exists()


def test_a_revocation_toasts_only_where_the_badge_announces_endings(
    owner, staff_user, pushes, django_capture_on_commit_callbacks
):
    badge = make_images_badge(threshold=1)
    badge.announce_endings = True
    badge.save()
    _post(owner, 1)
    with django_capture_on_commit_callbacks(execute=True):
        revoke_badge(user_id=owner.pk, badge=badge, reason="r", by=Actor(staff_user.pk))
    [frame] = pushes
    assert [t["headline"] for t in frame["toasts"]] == ["Badge taken back"]
    assert frame["cards"][0]["revoked"]


def test_a_grant_completes_the_composites_it_is_part_of(
    owner, staff_user, django_capture_on_commit_callbacks
):
    from achievements.models import BadgeRequirement

    part = make_images_badge(threshold=10)
    combo = make_badge(key="combo", requirements=[])
    requirement = BadgeRequirement.objects.create(badge=combo, kind="composite", threshold=0)
    requirement.composite_badges.set([part])
    with django_capture_on_commit_callbacks(execute=True):
        grant_badge(user_id=owner.pk, badge=part, reason="r", by=Actor(staff_user.pk))
    assert Unlock.objects.held().filter(user=owner, badge=combo).exists()


def test_revoking_a_repeatable_badges_earning_from_before_it_repeated_keeps_the_others(
    owner, staff_user
):
    badge = make_images_badge(threshold=1)
    _post(owner, 1, when=timezone.now() - timedelta(days=1))  # earned once, before it repeated
    badge.repeat = "day"
    badge.save()
    badge.requirements.update(scope="day")
    _post(owner, 2)
    assert sorted(Unlock.objects.held().values_list("period", flat=True))[0] == ""
    assert Unlock.objects.held().count() == 2
    revoke_badge(user_id=owner.pk, badge=badge, period="", reason="r", by=Actor(staff_user.pk))
    assert "" not in Unlock.objects.held().values_list("period", flat=True)
    assert Unlock.objects.held().count() == 1


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ("banana", "give the period as"),
        ("2026-W49", "give the period as"),  # a week for a daily badge
        ("2999-01-01", "has not begun yet"),
        ("2026-02-30", "give the period as"),
        ("\ud800", "unpaired surrogates"),
    ],
)
def test_a_granted_period_must_be_one_of_the_badges_periods_and_not_to_come(
    owner, staff_user, period, message
):
    badge = make_images_badge(threshold=1)
    badge.repeat = "day"
    badge.save()
    badge.requirements.update(scope="day")
    with pytest.raises(AwardRefused, match=message) as refused:
        grant_badge(
            user_id=owner.pk, badge=badge, period=period, reason="r", by=Actor(staff_user.pk)
        )
    assert refused.value.field == "period"
    assert not Unlock.objects.exists()
    # A past day, written as the badge writes its days, is fine.
    grant_badge(
        user_id=owner.pk, badge=badge, period="2026-01-05", reason="r", by=Actor(staff_user.pk)
    )
    assert list(Unlock.objects.values_list("period", flat=True)) == ["2026-01-05"]


def test_a_reason_the_database_cannot_store_is_refused(owner, staff_user):
    badge = make_images_badge(threshold=1)
    with pytest.raises(AwardRefused, match="surrogates") as refused:
        grant_badge(user_id=owner.pk, badge=badge, reason="a\ud800", by=Actor(staff_user.pk))
    assert refused.value.field == "reason"
