"""The batch engine gives what evaluating the events one at a time gives."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group

from accounts.models import Profile
from achievements.engine import evaluate_event, evaluate_events
from achievements.events import record_event
from achievements.models import (
    DistinctValue,
    Event,
    RequirementProgress,
    Unlock,
    UserBadge,
)
from achievements.replay import replay_events
from achievements.rulefiles import document, import_badges
from tests.factories import make_user
from tests.rule_kinds import BADGES, EVENTS, EXPECTED, MONDAY


@pytest.fixture
def kinds(db):
    group = Group.objects.create(name="rule-kinds")
    import_badges(document(BADGES))
    users = [make_user(username=f"k{n}") for n in range(3)]
    for user in users:
        user.groups.add(group)
    # One user in New York and on the "pro" plan: other periods, and the segment badge.
    # (Users get no profile until they set one, so it is created here.)
    Profile.objects.create(user=users[2], time_zone="America/New_York", attributes={"plan": "pro"})
    return users


def _record(users, seed: int) -> list[int]:
    """EVENTS for every user, plus extra noise, in a shuffled order of arrival."""
    rng = random.Random(seed)
    stream: list[tuple[Any, ...]] = [(user, *event) for user in users for event in EVENTS]
    stream += [
        (
            rng.choice(users),
            rng.choice([e[0] for e in EVENTS]),
            rng.random() * 20,
            {"km": rng.randrange(8), "seconds": rng.randrange(60), "place": rng.randrange(4)},
        )
        for _ in range(60)
    ]
    rng.shuffle(stream)
    return [
        record_event(
            user, event_type, payload=payload, occurred_at=MONDAY + timedelta(days=day)
        ).event.pk
        for user, event_type, day, payload in stream
    ]


def _without_mark(state: dict) -> str:
    return json.dumps({k: v for k, v in state.items() if k != "lt"}, sort_keys=True)


def _snapshot() -> dict:
    return {
        "unlocks": sorted(
            Unlock.objects.values_list(
                "user_id", "badge__key", "period", "tier", "event_id", "event_ids", "took"
            ),
            key=repr,
        ),
        "standings": sorted(
            UserBadge.objects.exclude(last_evaluated_at=None).values_list(
                "user_id",
                "badge__key",
                "current_value",
                "target_value",
                "tier",
                "completed_by_event_id",
            )
        ),
        # Without the mark of the latest event that changed a state, which one
        # that was depends on the order of arrival (see achievements/core.py).
        "progress": sorted(
            (user, requirement, _without_mark(state), met_by, started)
            for user, requirement, state, met_by, started in RequirementProgress.objects.exclude(
                state={}
            ).values_list("user_id", "requirement_id", "state", "met_by", "started_at")
        ),
        "distinct": sorted(
            DistinctValue.objects.values_list("user_id", "requirement_id", "value_key")
        ),
        "unprocessed": Event.objects.filter(processed_at=None).count(),
    }


def _forget_evaluations() -> None:
    for model in (Unlock, UserBadge, RequirementProgress, DistinctValue):
        model.objects.all().delete()
    Event.objects.update(processed_at=None)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_of_any_size_match_one_event_at_a_time(kinds, seed):
    pks = _record(kinds, seed)  # on_commit never runs here: nothing is evaluated yet
    for pk in pks:
        evaluate_event(pk)
    one_at_a_time = _snapshot()
    assert one_at_a_time["unprocessed"] == 0
    # Every user earned at least what EVENTS earns on its own.
    for user in kinds[:2]:
        earned = {(key, period, tier) for u, key, period, tier, *_ in one_at_a_time["unlocks"]}
        assert set(EXPECTED) <= earned, user

    _forget_evaluations()
    rng = random.Random(seed)
    remaining = list(pks)
    while remaining:
        size = rng.choice([1, 2, 7, 50, 500])
        evaluate_events(remaining[:size])
        remaining = remaining[size:]
    assert _snapshot() == one_at_a_time


def test_a_batch_skips_events_already_evaluated_and_evaluates_nothing_twice(kinds):
    pks = _record(kinds[:1], seed=4)
    first = evaluate_events(pks[:10])
    assert first.claimed == sorted(pks[:10])
    again = evaluate_events(pks)
    assert again.claimed == sorted(pks[10:])
    assert evaluate_events(pks).claimed == []
    before = _snapshot()
    evaluate_events(pks)
    assert _snapshot() == before


def test_replay_in_chunks_of_any_size_gives_one_result(kinds):
    """Every rule kind, a segment, a composite and another time zone, across chunk edges."""
    for pk in _record(kinds, seed=5):
        evaluate_event(pk)
    live = _snapshot()

    def replayed(chunk_users: int) -> dict:
        RequirementProgress.objects.all().delete()
        DistinctValue.objects.all().delete()
        UserBadge.objects.update(current_value=0, target_value=0)
        report = replay_events(chunk_users=chunk_users)
        assert report.users == 3 and report.newly_unlocked == []
        return _snapshot()

    one_user_at_a_time = replayed(1)
    for chunk_users in (2, 250):
        assert replayed(chunk_users) == one_user_at_a_time, chunk_users

    # Live evaluation saw the events out of order; replay folds them in time
    # order. Witnesses are defined by occurrence order, so the two agree on
    # everything, which event first met each requirement included.
    assert one_user_at_a_time == live


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_live_batches_replay_and_reevaluation_agree_provenance_included(kinds, seed):
    """The same events, shuffled (late events included), evaluated one at a time, in
    random batches, replayed onto the unlocks, re-evaluated by a job, and replayed
    from nothing: one state, witnesses, provenance and times to unlock included."""
    from achievements import reevaluation
    from achievements.models import Badge, Reevaluation

    pks = _record(kinds, seed)
    for pk in pks:
        evaluate_event(pk)
    live = _snapshot()

    _forget_evaluations()
    rng = random.Random(seed)
    remaining = list(pks)
    while remaining:
        size = rng.choice([1, 3, 20, 500])
        evaluate_events(remaining[:size])
        remaining = remaining[size:]
    assert _snapshot() == live

    RequirementProgress.objects.all().delete()
    DistinctValue.objects.all().delete()
    assert replay_events().newly_unlocked == []
    assert _snapshot() == live

    RequirementProgress.objects.all().delete()
    DistinctValue.objects.all().delete()
    job = Reevaluation.objects.create()
    job.badges.set(Badge.objects.all())
    reevaluation.run(job.pk)
    assert Reevaluation.objects.get(pk=job.pk).state == Reevaluation.State.DONE
    assert _snapshot() == live

    _forget_progress_and_unlocks()
    replay_events()
    assert _snapshot() == live


def _forget_progress_and_unlocks() -> None:
    Unlock.objects.all().delete()
    RequirementProgress.objects.all().delete()
    DistinctValue.objects.all().delete()
    UserBadge.objects.update(
        current_value=0, target_value=0, completed_at=None, completed_by_event=None, tier=0
    )


@pytest.mark.django_db(transaction=True)
def test_replay_in_two_processes_gives_the_one_process_result(postgresql_only, kinds):
    """Forked processes, each chunk its own transaction, committed for the others to see."""
    for pk in _record(kinds, seed=5):
        evaluate_event(pk)

    def replayed(processes: int) -> tuple[dict, list, list]:
        _forget_progress_and_unlocks()
        progress: list[tuple[int, int]] = []
        report = replay_events(
            chunk_users=1,
            processes=processes,
            on_progress=lambda done, total: progress.append((done, total)),
        )
        assert report.users == 3
        assert report.events == Event.objects.filter(user__in=kinds).count()
        assert progress == [(1, 3), (2, 3), (3, 3)]
        return _snapshot(), sorted(report.newly_unlocked), sorted(report.newly_earned)

    one = replayed(1)
    assert one[1], "the replay must award unlocks for the comparison to mean much"
    assert replayed(2) == one


@pytest.mark.django_db(transaction=True)
def test_a_replay_in_processes_stopped_early_keeps_what_finished(postgresql_only, kinds):
    for pk in _record(kinds, seed=6):
        evaluate_event(pk)
    _forget_progress_and_unlocks()
    replay_events(chunk_users=1)
    expected = _snapshot()
    _forget_progress_and_unlocks()

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        replay_events(chunk_users=1, processes=2, on_progress=stop)
    # At least the first user's chunk committed; a full replay then completes the rest.
    assert Unlock.objects.exists()
    replay_events(chunk_users=1, processes=2)
    assert _snapshot() == expected


def test_replay_in_processes_is_refused_inside_a_transaction(postgresql_only, kinds):
    for pk in _record(kinds, seed=7):
        evaluate_event(pk)
    before = _snapshot()
    with pytest.raises(ValueError, match="cannot run inside a transaction"):
        replay_events(chunk_users=1, processes=2)
    assert _snapshot() == before


@pytest.mark.parametrize("size", [1, 7, 500])
def test_the_cards_a_batch_pushes_from_its_own_rows_are_the_databases(
    kinds, size, monkeypatch, django_capture_on_commit_callbacks
):
    """After its commit a batch builds the cards it pushes from the standings,
    progress and time zones it wrote, instead of reading them back: the same
    cards as a read at that moment gives, for every rule kind."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import time_zone_for
    from achievements import delivery, rarity
    from achievements.cards import cards_for_users

    _record(kinds, seed=4)
    pushes: list[tuple[dict, dict, list[str]]] = []  # batches' pushes (composites push too)
    zones: list[tuple[dict, dict]] = []
    unlocks: list[tuple[dict, dict]] = []

    def notify_many(changes, *, known=None):
        # Called on commit, where errors are only logged: record, assert below.
        if known is None:
            return  # a composite's unlock, pushed by actions after the batch
        wanted = {user_id: set(badge_ids) for user_id, (badge_ids, _) in changes.items()}
        rarity.shares()  # counted once a minute per process, not per batch
        with CaptureQueriesContext(connection) as queries:
            pushed = cards_for_users(wanted, known=known)
        pushes.append((pushed, cards_for_users(wanted), [q["sql"] for q in queries]))
        zones.append((known.zones, {u: time_zone_for(u) for u in known.zones}))
        made = {pk for _, unlock_ids in changes.values() for pk in unlock_ids}
        stored = Unlock.objects.filter(pk__in=made).values_list(
            "pk", "user_id", "badge_id", "tier", "period", "event__received_at"
        )
        unlocks.append((known.unlocks, {pk: tuple(rest) for pk, *rest in stored}))

    monkeypatch.setattr(delivery, "notify_many", notify_many)
    while True:
        with django_capture_on_commit_callbacks(execute=True):
            claimed = evaluate_events(limit=size).claimed
        if not claimed:
            break
    read_back = ('"achievements_userbadge"', '"achievements_requirementprogress"', '"time_zone"')
    for pushed, from_database, queries in pushes:
        assert pushed == from_database
        assert not [sql for sql in queries if any(name in sql for name in read_back)]
    # Period measures at "now" do not depend on the zone here, so compare it directly.
    assert all(known == stored for known, stored in zones)
    assert "America/New_York" in {zone for known, _ in zones for zone in known.values()}
    # Cards of every kind of badge were compared.
    assert sum(len(cards) for pushed, _, _ in pushes for cards in pushed.values()) >= 20
    # The unlocks the push toasts are the batch's own, as stored.
    assert all(known == stored for known, stored in unlocks)
    assert sum(len(known) for known, _ in unlocks) >= 10


@pytest.mark.django_db(transaction=True)  # the push runs on commit, in the batch
def test_a_batch_pushes_its_unlocks_without_reading_them_back(owner, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements import realtime
    from tests.factories import make_badge

    make_badge(key="first_visit", requirements=[{"event_type": "visit.created", "threshold": 1}])
    event = Event.objects.create(  # waiting, as a request commits it
        event_id="v-1", event_type="visit.created", user=owner, occurred_at=MONDAY
    )
    sent: dict[str, dict] = {}

    def send_to_groups(messages):
        sent.update(messages)
        return set(messages)

    monkeypatch.setattr(realtime, "nobody_listens", lambda layer: False)
    monkeypatch.setattr(realtime, "send_to_groups", send_to_groups)
    with CaptureQueriesContext(connection) as queries:
        evaluate_events([event.pk])
    [unlock] = Unlock.objects.filter(user=owner)
    [message] = sent.values()
    assert [toast["unlock_id"] for toast in message["toasts"]] == [unlock.pk]
    assert unlock.delivered_at is not None  # the push marked it
    unlock_reads = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and 'FROM "achievements_unlock"' in q["sql"]
    ]
    assert unlock_reads == []


@pytest.mark.django_db(transaction=True)
def test_a_batch_records_its_metrics_in_one_round_trip(owner, real_redis, monkeypatch):
    """The evaluation time, the unlocks counter and the unlock latency (recorded
    in the batch, after its commit and after its push) go to Redis together."""
    from achievements import metrics, presence, realtime
    from tests.factories import make_badge

    make_badge(key="first_visit", requirements=[{"event_type": "visit.created", "threshold": 1}])
    event = Event.objects.create(
        event_id="v-1", event_type="visit.created", user=owner, occurred_at=MONDAY
    )
    monkeypatch.setattr(realtime, "nobody_listens", lambda layer: False)
    monkeypatch.setattr(realtime, "send_to_groups", lambda messages: set(messages))
    monkeypatch.setattr(presence, "present_users", lambda user_ids: set(user_ids))
    real_redis.delete(metrics._key())
    sends: list[set[str]] = []
    pipeline = real_redis.pipeline

    def watched(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*args, **kwargs):
            fields = {
                command[0][2] for command in pipe.command_stack if command[0][1] == metrics._key()
            }
            if fields:
                sends.append(fields)
            return execute(*args, **kwargs)

        pipe.execute = counted
        return pipe

    monkeypatch.setattr(real_redis, "pipeline", watched)
    try:
        evaluate_events([event.pk])
        [fields] = sends
        assert {
            "accolade_evaluation_seconds_count",
            "accolade_unlocks_total",
            "accolade_unlock_latency_seconds_count",
        } <= fields
        assert int(real_redis.hget(metrics._key(), "accolade_unlocks_total")) == 1
    finally:
        real_redis.delete(metrics._key())
