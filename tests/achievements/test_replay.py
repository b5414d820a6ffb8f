from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import DistinctValue, RequirementProgress, Unlock, UserBadge
from tests.factories import make_images_badge, make_places_badge


def dump() -> dict[str, list]:
    """Every piece of progress state, without the timestamps a rebuild may move."""
    return {
        "progress": sorted(
            (user, requirement, value, json.dumps(state, sort_keys=True))
            for user, requirement, value, state in RequirementProgress.objects.values_list(
                "user_id", "requirement_id", "value", "state"
            )
        ),
        "distinct": sorted(
            DistinctValue.objects.values_list("user_id", "requirement_id", "value_key")
        ),
        "user_badges": sorted(
            UserBadge.objects.values_list(
                "user_id",
                "badge_id",
                "current_value",
                "target_value",
                "completed_at",
                "completed_by_event",
                "tier",
            )
        ),
        "unlocks": sorted(
            Unlock.objects.values_list(
                "user_id", "badge_id", "period", "tier", "unlocked_at", "event"
            )
        ),
    }


@pytest.fixture
def history(owner, second_user):
    places = make_places_badge(threshold=3)
    images = make_images_badge(threshold=2)
    for n, place in enumerate([1, 2, 2, 3, 4]):
        evaluate_event(
            record_event(
                owner, "visit.created", payload={"place_id": place}, event_id=f"o{n}"
            ).event.pk
        )
    for n in range(3):
        evaluate_event(record_event(second_user, "image.posted", event_id=f"s{n}").event.pk)
    # Events the rules accept only in part, or not at all, must replay the same way.
    partial_payloads: list[dict] = [{}, {"place_id": None}, {"other": 1}]
    for n, payload in enumerate(partial_payloads):
        evaluate_event(
            record_event(owner, "visit.created", payload=payload, event_id=f"x{n}").event.pk
        )
    evaluate_event(record_event(owner, "lesson.finished", event_id="x9").event.pk)
    from django.contrib.auth import get_user_model

    stranger = get_user_model().objects.create_user("stranger")
    evaluate_event(record_event(stranger, "visit.created", payload={}, event_id="z1").event.pk)
    evaluate_event(
        record_event(second_user, "visit.created", payload={"place_id": 1}, event_id="s9").event.pk
    )
    return places, images


def test_replaying_the_log_reproduces_live_evaluation_exactly(history):
    live = dump()
    call_command("replay_events")
    assert dump() == live


def test_replaying_twice_gives_identical_state(history):
    call_command("replay_events")
    first = dump()
    call_command("replay_events")
    assert dump() == first


def test_replay_rebuilds_lost_progress(history):
    expected = dump()
    RequirementProgress.objects.all().delete()
    DistinctValue.objects.all().delete()
    UserBadge.objects.update(current_value=0)
    call_command("replay_events")
    assert dump() == expected


def test_a_badge_added_later_is_unlocked_silently_by_replay(history, owner, second_user):
    from django.contrib.auth import get_user_model

    from tests.factories import make_badge

    visitor = make_badge(
        key="visitor", requirements=[{"event_type": "visit.created", "threshold": 1}]
    )
    call_command("replay_events", badges=["visitor"])
    unlocks = Unlock.objects.filter(badge=visitor)
    stranger = get_user_model().objects.get(username="stranger")
    assert sorted(unlocks.values_list("user_id", flat=True)) == sorted(
        [owner.pk, second_user.pk, stranger.pk]
    )
    assert all(u.silent and u.seen_at is not None for u in unlocks)
    owner_unlock = unlocks.get(user=owner)
    assert owner_unlock.event is not None and owner_unlock.event.event_id == "o0"


def test_replay_never_revokes_an_unlock(history, owner, capsys):
    places, _ = history
    places.requirements.update(threshold=50)
    call_command("replay_events")
    user_badge = UserBadge.objects.get(user=owner, badge=places)
    assert user_badge.completed_at is not None
    assert Unlock.objects.filter(user=owner, badge=places).exists()
    assert user_badge.current_value == 4 and user_badge.target_value == 50
    assert "1 unlock(s) no longer qualify" in capsys.readouterr().out


def test_an_unlock_no_event_moves_any_more_is_kept_and_reported(history, owner, capsys):
    places, _ = history
    from achievements.models import Event

    # The owner's visits stay, but none names a place any more: no event moves the badge.
    Event.objects.filter(user=owner, event_type="visit.created").update(payload={})
    call_command("replay_events")
    user_badge = UserBadge.objects.get(user=owner, badge=places)
    assert user_badge.completed_at is not None
    assert Unlock.objects.filter(user=owner, badge=places).exists()
    out = capsys.readouterr().out
    assert "1 unlock(s) no longer qualify" in out and f"  {owner.pk}, {places.pk}" in out


def test_replay_sends_no_toasts(history, monkeypatch, django_capture_on_commit_callbacks):
    from achievements import realtime

    sent = []
    monkeypatch.setattr(realtime, "_server_loop_running", lambda: True)
    monkeypatch.setattr(realtime, "send_to_group", lambda *args: sent.append(args))
    monkeypatch.setattr(realtime, "send_to_groups", lambda messages: sent.append(messages))
    from tests.factories import make_badge

    make_badge(key="visitor", requirements=[{"event_type": "visit.created", "threshold": 1}])
    with django_capture_on_commit_callbacks(execute=True):
        call_command("replay_events")
    assert sent == []


def test_replay_for_one_badge_leaves_the_others_alone(history, second_user):
    _, images = history
    RequirementProgress.objects.filter(requirement__badge=images).update(value=99)
    call_command("replay_events", badges=["places_visited_3"])
    assert RequirementProgress.objects.get(user=second_user, requirement__badge=images).value == 99


def test_pending_events_are_left_to_their_own_evaluation(history, owner):
    before = dump()
    record_event(owner, "visit.created", payload={"place_id": 77}, event_id="pending")
    call_command("replay_events")
    assert dump() == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"since": "last tuesday"}, "--since 'last tuesday' is not a date"),
        ({"since": "2026-02-30"}, "--since '2026-02-30' is not a date"),
        ({"badges": ["nope"]}, "--badge: no active badge with key 'nope'."),
        ({"processes": 0}, "--processes must be between 1 and 64, not 0."),
        ({"processes": 65}, "--processes must be between 1 and 64, not 65."),
    ],
)
def test_bad_options_are_refused_and_change_nothing(history, options, message):
    before = dump()
    with pytest.raises(CommandError) as raised:
        call_command("replay_events", **options)
    assert str(raised.value).startswith(message)
    assert dump() == before


def test_several_processes_are_refused_on_sqlite(history):
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the embedded database only")
    before = dump()
    with pytest.raises(CommandError, match=r"--processes 2 needs PostgreSQL; sqlite takes one"):
        call_command("replay_events", processes=2)
    assert dump() == before


def test_replay_awards_tiers_and_periods_a_rule_change_reaches(owner):
    from datetime import UTC, datetime, timedelta

    from achievements.models import BadgeRequirement
    from achievements.replay import replay_events
    from tests.factories import make_badge

    tiered = make_places_badge(threshold=2)
    weekly = make_badge(key="weekly", requirements=[])
    BadgeRequirement.objects.create(
        badge=weekly, event_type="visit.created", threshold=2, scope="week"
    )
    monday = datetime(2026, 3, 2, 9, tzinfo=UTC)
    for day, place in [(0, 1), (1, 2), (2, 3), (7, 4), (8, 5), (14, 6)]:
        evaluate_event(
            record_event(
                owner,
                "visit.created",
                payload={"place_id": place},
                occurred_at=monday + timedelta(days=day),
            ).event.pk
        )
    assert Unlock.objects.filter(user=owner).count() == 2  # each once, before the change
    first_unlock = Unlock.objects.get(badge=tiered)

    # Staff grade the places badge in tiers and make the weekly one repeatable.
    tiered.tiers = [{"name": "Bronze", "threshold": 2}, {"name": "Silver", "threshold": 5}]
    tiered.save()
    weekly.repeat = "week"
    weekly.save()
    report = replay_events()
    assert (owner.pk, tiered.pk) in report.newly_unlocked
    assert not report.no_longer_qualifying
    silver = Unlock.objects.get(badge=tiered, tier=2)
    assert silver.silent and silver.event and silver.event.payload == {"place_id": 5}
    # The unlock from before the tiers stands for the first one: no second Bronze.
    assert list(Unlock.objects.filter(badge=tiered).values_list("pk", "tier")) == [
        (silver.pk, 2),
        (first_unlock.pk, 0),
    ]
    # The unlock from before it repeated fell in week 10: it is that week's earning.
    assert sorted(Unlock.objects.filter(badge=weekly).values_list("period", flat=True)) == [
        "",
        "2026-W11",
    ]
    assert UserBadge.objects.get(user=owner, badge=tiered).tier == 2
    before = dump()
    replay_events()
    assert dump() == before  # a second replay changes nothing


def test_replay_repairs_each_kind_of_wrong_row(history, owner, second_user):
    places, images = history
    expected = dump()
    visits = places.requirements.get()
    RequirementProgress.objects.filter(user=owner, requirement=visits).update(
        value=1, state={"b": {"all": "1"}}
    )
    DistinctValue.objects.filter(user=owner, requirement=visits).order_by("pk")[:1].get().delete()
    DistinctValue.objects.create(user=owner, requirement=visits, value_key="bogus")
    UserBadge.objects.filter(user=second_user, badge=images).update(current_value=0)
    # Left by an earlier form of a rule: counts keep no distinct values.
    DistinctValue.objects.create(
        user=second_user, requirement=images.requirements.get(), value_key="left-over"
    )
    assert dump() != expected
    call_command("replay_events")
    assert dump() == expected


def _row_versions() -> dict[str, list[tuple]]:
    from django.db import connection

    versions = {}
    with connection.cursor() as cursor:
        for model in (RequirementProgress, DistinctValue, UserBadge):
            table = model._meta.db_table
            cursor.execute(f"SELECT id, xmin::text FROM {table} ORDER BY id")
            versions[table] = cursor.fetchall()
    return versions


def test_replay_over_unchanged_rules_rewrites_no_row(postgresql_only, history, owner):
    places, _ = history
    call_command("replay_events")  # the rows as a replay leaves them
    before = _row_versions()
    call_command("replay_events")
    assert _row_versions() == before
    # Only the rows that differ are written: the progress row, and the standing
    # it belongs to (stamped, so a page's catch-up sends the card), as live
    # evaluation does.
    visits = places.requirements.get()
    RequirementProgress.objects.filter(user=owner, requirement=visits).update(value=1)
    changed = _row_versions()
    call_command("replay_events")
    after = _row_versions()

    def moved(model) -> list[int]:
        table = model._meta.db_table
        return [pk for pk, version in after[table] if (pk, version) not in changed[table]]

    assert moved(RequirementProgress) == [
        RequirementProgress.objects.get(user=owner, requirement=visits).pk
    ]
    assert moved(UserBadge) == [UserBadge.objects.get(user=owner, badge=places).pk]
    assert moved(DistinctValue) == []
