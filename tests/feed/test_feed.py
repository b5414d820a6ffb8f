"""The analytics feed: events, decisions and unlocks written with what they tell,
exported to files once each, whatever fails on the way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.models import Profile
from achievements import rules
from achievements.awards import Actor, grant_badge, revoke_badge
from achievements.engine import evaluate_event, evaluate_events
from achievements.events import record_event
from achievements.metrics import render
from achievements.models import Unlock
from feed import export
from feed.models import Batch, File
from feed.storage import FeedDirectory
from tests.factories import make_badge, make_images_badge, make_places_badge
from tests.feed.conftest import read_feed


def _visit(user, place, *, event_id=None, at=None):
    recorded = record_event(
        user, "visit.created", payload={"place_id": place}, event_id=event_id, occurred_at=at
    )
    return evaluate_event(recorded.event.pk)


def test_an_event_its_decisions_and_its_unlock_reach_a_file_with_the_schema(owner, feed_dir):
    badge = make_places_badge(threshold=2)
    _visit(owner, 1, event_id="v-1")
    _visit(owner, 1, event_id="v-2")  # the same place: changes nothing
    _visit(owner, 2, event_id="v-3")  # the second place: unlocks

    assert export.export_due() == 1
    records = read_feed(feed_dir)
    assert Batch.objects.count() == 0
    events = [r for r in records if r["record"] == "event"]
    assert [e["event_id"] for e in events] == ["v-1", "v-2", "v-3"]
    first = events[0]
    assert first["schema"] == 1 and first["user_id"] == owner.pk
    assert first["producer"] == "app" and first["event_type"] == "visit.created"
    assert datetime.fromisoformat(first["event_time"]).tzinfo is not None
    assert first["processing_time"] and first["received_time"]
    decisions = [(r["event_id"], r["decision"]) for r in records if r["record"] == "decision"]
    assert decisions == [("v-1", "counted"), ("v-2", "no_change"), ("v-3", "counted")]
    decision = next(r for r in records if r["record"] == "decision")
    requirement = badge.requirements.get()
    assert decision["badge_id"] == badge.pk and decision["badge"] == badge.key
    assert decision["rule_id"] == requirement.pk and decision["rule_version"] == 1
    assert decision["dedup_key"] == f"decision:{first['dedup_key'].split(':')[1]}:{requirement.pk}"
    [unlock] = [r for r in records if r["record"] == "unlock"]
    held = Unlock.objects.get(user=owner, badge=badge)
    assert unlock["change"] == "earned" and unlock["unlock_id"] == held.pk
    assert unlock["dedup_key"] == f"unlock:{held.pk}:earned"
    assert unlock["rule_version"] == 1 and unlock["cause"] == "rule"
    assert unlock["event_ids"] == ["v-3"]  # the witness
    assert datetime.fromisoformat(unlock["unlocked_at"]) == held.unlocked_at
    # Every fact once: the keys are unique.
    keys = [r["dedup_key"] for r in records]
    assert len(keys) == len(set(keys))


def test_the_filters_leaving_an_event_out_is_a_decision_too(owner, feed_dir):
    badge = make_badge(
        key="big_spender",
        requirements=[
            {
                "event_type": "order.paid",
                "aggregation": rules.Aggregation.SUM,
                "field": "amount",
                "threshold": 100,
            }
        ],
    )
    requirement = badge.requirements.get()
    requirement.filters = {"all": [{"field": "currency", "op": "==", "value": "EUR"}]}
    requirement.save()
    for n, currency in enumerate(["EUR", "USD"]):
        recorded = record_event(
            owner, "order.paid", payload={"amount": 10, "currency": currency}, event_id=f"o-{n}"
        )
        evaluate_event(recorded.event.pk)
    export.export_due()
    decisions = [
        (r["event_id"], r["decision"]) for r in read_feed(feed_dir) if r["record"] == "decision"
    ]
    assert decisions == [("o-0", "counted"), ("o-1", "filtered_out")]


def test_staff_grants_and_revocations_are_unlock_records(owner, staff_user, feed_dir):
    badge = make_images_badge(threshold=5)
    by = Actor(user_id=staff_user.pk)
    grant_badge(user_id=owner.pk, badge=badge, reason="Helped at the meetup", by=by)
    revoke_badge(user_id=owner.pk, badge=badge, reason="A mistake", by=by)
    export.export_due()
    changes = [(r["change"], r["cause"]) for r in read_feed(feed_dir) if r["record"] == "unlock"]
    assert changes == [("granted", "staff"), ("revoked", "staff")]


def test_a_batch_that_rolls_back_leaves_no_records(owner, feed_dir):
    make_places_badge(threshold=1)
    recorded = record_event(owner, "visit.created", payload={"place_id": 1})
    with pytest.raises(RuntimeError), transaction.atomic():
        evaluate_events([recorded.event.pk])
        raise RuntimeError("the worker died before the commit")
    assert Batch.objects.count() == 0
    evaluate_events([recorded.event.pk])  # evaluated again, for good
    export.export_due()
    records = read_feed(feed_dir)
    # The unlock's record is written with the ledger, before the batch's.
    assert sorted(r["record"] for r in records) == ["decision", "event", "unlock"]


def test_an_export_that_dies_after_writing_writes_the_same_file_again_and_no_record_twice(
    owner, feed_dir, monkeypatch
):
    make_places_badge(threshold=3)
    for place in (1, 2):
        _visit(owner, place)
    written = []

    def die_after_writing(self, name, content):
        written.append((name, content.read()))
        content.seek(0)
        saved(self, name, content)
        raise SystemExit("killed after the file was written, before the commit")

    saved = FeedDirectory._save
    monkeypatch.setattr(FeedDirectory, "_save", die_after_writing)
    with pytest.raises(SystemExit):
        export.export_due()
    monkeypatch.undo()
    # The file was named and its batches claimed before it was written.
    [file] = File.objects.all()
    assert file.written_at is None and file.batches.count() == 2
    _visit(owner, 3)  # more comes in meanwhile: it goes to a file of its own
    assert export.export_due() == 2
    names = sorted(p.relative_to(feed_dir).as_posix() for p in feed_dir.rglob("*.gz"))
    assert names == sorted(File.objects.values_list("name", flat=True))
    [(name, first_bytes)] = written
    assert name == file.name and len(names) == 2
    assert (feed_dir / name).read_bytes() == first_bytes  # the same file, byte for byte
    records = read_feed(feed_dir)
    keys = [r["dedup_key"] for r in records]
    assert len(keys) == len(set(keys))
    assert sum(r["record"] == "event" for r in records) == 3
    assert not list(feed_dir.rglob(".writing-*"))  # no half file left beside them


def test_a_file_holds_one_utc_day_and_is_named_after_it(owner, feed_dir):
    make_places_badge(threshold=5)
    _visit(owner, 1)
    _visit(owner, 2)
    late, early = Batch.objects.order_by("pk")
    late.written_at = datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC)
    late.save()
    early.written_at = datetime(2026, 12, 8, 0, 0, 1, tzinfo=UTC)
    early.save()
    assert export.export_due() == 2
    assert sorted(File.objects.values_list("day", flat=True)) == [
        datetime(2026, 12, 7).date(),
        datetime(2026, 12, 8).date(),
    ]
    assert {p.parent.name for p in feed_dir.rglob("*.gz")} == {
        "date=2026-12-07",
        "date=2026-12-08",
    }


def test_a_late_event_that_refolds_its_pair_gives_one_decision_per_requirement(owner, feed_dir):
    make_places_badge(threshold=2)
    now = timezone.now()
    _visit(owner, 1, event_id="v-new", at=now)
    _visit(owner, 2, event_id="v-newer", at=now + timedelta(minutes=1))  # unlocks
    # Older than the witness: the pair is folded again from its history.
    _visit(owner, 3, event_id="v-late", at=now - timedelta(hours=1))
    export.export_due()
    records = read_feed(feed_dir)
    decisions = [(r["event_id"], r["decision"]) for r in records if r["record"] == "decision"]
    assert decisions == [("v-new", "counted"), ("v-newer", "counted"), ("v-late", "counted")]
    keys = [r["dedup_key"] for r in records]
    assert len(keys) == len(set(keys))


def test_old_days_are_pruned_once_they_were_written_as_long_ago(owner, feed_dir, settings):
    settings.ACCOLADE_FEED_KEEP_DAYS = 2
    make_places_badge(threshold=5)
    _visit(owner, 1)
    Batch.objects.update(written_at=timezone.now() - timedelta(days=3))
    _visit(owner, 2)
    # The old day's batch waited out an outage: written now, its file is kept.
    assert export.export_due() == 2
    assert File.objects.count() == 2
    old = File.objects.get(day=(timezone.now() - timedelta(days=3)).date())
    File.objects.filter(pk=old.pk).update(written_at=timezone.now() - timedelta(days=3))
    export.export_due()
    assert list(File.objects.values_list("day", flat=True)) == [timezone.now().date()]
    assert len(list(feed_dir.rglob("*.gz"))) == 1


def test_an_export_writes_what_waited_when_it_began_and_takes_turns(owner, feed_dir):
    make_places_badge(threshold=5)
    _visit(owner, 1)
    first = export._next_file(Batch.objects.latest("pk").pk, set())
    assert first is not None
    # A second exporter meanwhile: it finishes the named file, and the first's
    # write of it then finds nothing to do.
    assert export.export_due() == 1
    assert export._write(first) is False
    _visit(owner, 2)
    last = Batch.objects.latest("pk").pk
    _visit(owner, 3)  # arrives after the run began: the next run's
    later = export._next_file(last, set())
    assert later is not None and later.batches.count() == 1


def test_a_feed_that_waits_shows_on_the_metrics_and_evaluation_goes_on(owner, feed_dir):
    badge = make_places_badge(threshold=2)
    for place in (1, 2):
        _visit(owner, place)  # nobody exports: the records wait
    assert Unlock.objects.filter(user=owner, badge=badge).exists()
    text = render()
    assert "accolade_feed_waiting_batches 3" in text
    assert "accolade_feed_oldest_waiting_seconds" in text


def test_a_badge_limited_to_a_segment_has_decisions_for_its_members_only(
    owner, second_user, feed_dir
):
    badge = make_places_badge(threshold=5)
    badge.segment_attribute, badge.segment_value = "plan", "pro"
    badge.save()
    Profile.objects.update_or_create(user=owner, defaults={"attributes": {"plan": "pro"}})
    Profile.objects.update_or_create(user=second_user, defaults={"attributes": {"plan": "free"}})
    _visit(owner, 1, event_id="pro-visit")
    _visit(second_user, 1, event_id="free-visit")
    evaluate_event(record_event(second_user, "visit.created", payload={}).event.pk)  # no place
    export.export_due()
    records = read_feed(feed_dir)
    assert {r["event_id"] for r in records if r["record"] == "event"} >= {
        "pro-visit",
        "free-visit",
    }
    decided = [(r["event_id"], r["decision"]) for r in records if r["record"] == "decision"]
    assert decided == [("pro-visit", "counted")]
