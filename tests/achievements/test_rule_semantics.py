"""The rule kinds exactly as docs/rules.md says: operators, filters, circles, time to
unlock, witnesses whatever the arrival order, and what an earned badge shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from achievements.cards import cards_for_user
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge, BadgeRequirement, RequirementProgress, Unlock
from achievements.replay import replay_events
from achievements.rulefiles import RuleFileError, document, import_badges
from achievements.rules import Condition, Operator
from tests.factories import make_badge, make_images_badge

START = datetime(2026, 3, 2, 12, tzinfo=UTC)


def record(user, event_type: str, day: float = 0, **payload):
    event = record_event(
        user,
        event_type,
        payload=payload,
        occurred_at=START + timedelta(days=day),
        event_id=f"{event_type}-{day}",
    ).event
    evaluate_event(event.pk)
    return event


# --- operators ---------------------------------------------------------------------


def test_a_streak_of_more_than_two_days_needs_three(owner):
    badge = make_badge(key="more_than_two", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge, kind="streak", event_type="lesson.done", threshold=2, operator=">"
    )
    record(owner, "lesson.done", 0)
    record(owner, "lesson.done", 1)
    assert not Unlock.objects.exists()  # two days running are not more than two
    record(owner, "lesson.done", 2)
    assert Unlock.objects.filter(badge=badge).exists()


@pytest.mark.parametrize(
    ("kind", "aggregation", "operator"),
    [
        ("streak", "count", "<="),
        ("streak", "count", "=="),
        ("aggregate", "count", "=="),
        ("aggregate", "count", "<"),
        ("aggregate", "distinct", "!="),
        ("aggregate", "sum", "<="),
        ("aggregate", "max", "<"),
        ("aggregate", "min", ">="),
        ("sequence", "count", ">"),
        ("composite", "count", "<="),
    ],
)
def test_an_operator_that_makes_no_sense_for_its_kind_is_refused(db, kind, aggregation, operator):
    requirement = BadgeRequirement(
        kind=kind,
        event_type="" if kind in ("sequence", "composite") else "run.finished",
        aggregation=aggregation,
        field="" if aggregation == "count" else "km",
        operator=operator,
        threshold=2,
        steps=["a.b", "c.d"] if kind == "sequence" else [],
    )
    with pytest.raises(ValidationError) as refused:
        requirement.full_clean(exclude=["badge"])
    assert "operator" in refused.value.message_dict
    assert f"not {operator}" in refused.value.message_dict["operator"][0]


@pytest.mark.parametrize("operator", [o.value for o in Operator])
def test_one_events_value_takes_every_comparison(db, operator):
    requirement = BadgeRequirement(
        event_type="run.finished", aggregation="single", field="km", operator=operator, threshold=5
    )
    requirement.full_clean(exclude=["badge"])


def test_import_names_the_operator_a_kind_cannot_use(db):
    with pytest.raises(RuleFileError) as refused:
        import_badges(
            document(
                [
                    {
                        "key": "streaky",
                        "name": "Streaky",
                        "requirements": [
                            {
                                "kind": "streak",
                                "event_type": "lesson.done",
                                "threshold": "3",
                                "operator": "<=",
                            }
                        ],
                    }
                ]
            )
        )
    assert refused.value.problems == [
        "badges[0] ('streaky').requirements[0].operator: "
        "A streak is compared with >= or >, not <=."
    ]
    assert not Badge.objects.exists()


# --- filters -----------------------------------------------------------------------


def test_a_not_equal_filter_matches_only_values_of_its_own_type():
    tag = Condition("tag", Operator.NE, "x")
    assert tag.matches({"tag": "y"})
    assert not tag.matches({"tag": "x"})
    assert not tag.matches({"tag": 1})  # a number is not a tag of another name
    assert not tag.matches({"tag": None})
    assert not tag.matches({"tag": ["y"]})
    assert not tag.matches({})
    number = Condition("n", Operator.NE, 3)
    assert number.matches({"n": 3.5})
    assert not number.matches({"n": 3.0})
    assert not number.matches({"n": "4"})
    assert not number.matches({"n": True})


# --- composites ----------------------------------------------------------------------


def _composite(key: str, *parts: str) -> dict:
    return {
        "key": key,
        "name": key.title(),
        "requirements": [{"kind": "composite", "threshold": "0", "composite_badges": list(parts)}],
    }


def test_import_refuses_composites_that_require_each_other_in_the_file(db):
    with pytest.raises(RuleFileError) as refused:
        import_badges(document([_composite("a", "b"), _composite("b", "a")]))
    assert refused.value.problems == [
        "badges[0] ('a').requirements: these badges would require each other in a circle: "
        "a → b → a"
    ]
    assert not Badge.objects.exists()


def test_import_refuses_a_circle_through_stored_badges(db):
    make_images_badge(threshold=1)
    import_badges(document([_composite("a", "b"), _composite("b", "images_posted_1")]))
    with pytest.raises(RuleFileError) as refused:
        import_badges(document([_composite("b", "a")]))  # a (stored) needs b
    assert "would require each other in a circle: " in refused.value.problems[0]
    assert list(Badge.objects.get(key="b").requirements.get().composite_badges.all()) == [
        Badge.objects.get(key="images_posted_1")
    ]


# --- witnesses and time to unlock, whatever the arrival order ----------------------


def test_time_to_unlock_runs_to_the_event_that_completed_it_in_occurrence_order(owner):
    badge = make_images_badge(threshold=2)
    later = record(owner, "image.posted", 5)
    record(owner, "image.posted", 0)  # arrives last, happened first
    unlock = Unlock.objects.get(badge=badge)
    assert unlock.took == timedelta(days=5)
    assert unlock.event_id == later.pk
    assert unlock.event_ids == [later.event_id]


def test_live_evaluation_and_replay_agree_on_the_witness_of_an_out_of_order_stream(owner):
    badge = make_images_badge(threshold=2)
    _, _, second = (record(owner, "image.posted", day) for day in (3, 1, 2))
    progress = RequirementProgress.objects.get(user=owner, requirement__badge=badge)
    live = (progress.met_by, list(Unlock.objects.values_list("event_id", "event_ids", "took")))
    assert live == (second.event_id, [(second.pk, [second.event_id], timedelta(days=1))])

    RequirementProgress.objects.all().delete()
    replay_events()
    progress = RequirementProgress.objects.get(user=owner, requirement__badge=badge)
    assert progress.met_by == second.event_id
    assert list(Unlock.objects.values_list("event_id", "event_ids", "took")) == live[1]


# --- an earned badge after its rule changes --------------------------------------


def test_an_earned_badge_shows_complete_after_its_rule_asks_more(owner):
    badge = make_images_badge(threshold=1)
    record(owner, "image.posted", 0)
    BadgeRequirement.objects.filter(badge=badge).update(threshold=2)
    [card] = cards_for_user(owner.pk)
    assert (card["completed"], card["percent"], card["current"], card["target"]) == (
        True,
        100,
        "2",
        "2",
    )
    assert card["requirements"] == [
        {
            "label": "times",
            "current": "2",
            "target": "2",
            "text": "2 of 2 times",
            "met": True,
            "percent": 100,
        }
    ]
