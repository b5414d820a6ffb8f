"""Every rule kind through the real engine: recorded events, stored state, unlocks, cards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accounts.models import Profile
from achievements.actions import evaluate_event
from achievements.cards import cards_for_user
from achievements.events import record_event
from achievements.models import BadgeRequirement, RequirementProgress, Unlock
from tests.factories import make_badge

START = datetime(2026, 3, 2, 12, tzinfo=UTC)


def record(user, event_type, day: float = 0, **payload):
    event = record_event(
        user, event_type, payload=payload, occurred_at=START + timedelta(days=day)
    ).event
    return evaluate_event(event.pk)


def test_a_filtered_sum_unlocks_when_only_matching_events_add_up(owner):
    badge = make_badge(key="long_runs", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge,
        event_type="run.finished",
        aggregation="sum",
        field="km",
        threshold=20,
        filters={"all": [{"field": "source", "op": "==", "value": "watch"}]},
        label="km",
    )
    record(owner, "run.finished", km=15, source="phone")
    record(owner, "run.finished", km=12, source="watch")
    assert not Unlock.objects.exists()
    record(owner, "run.finished", km=8.5, source="watch")
    assert Unlock.objects.filter(user=owner, badge=badge).count() == 1
    [card] = cards_for_user(owner.pk)
    assert card["requirements"][0]["text"] == "20.5 of 20 km"


def test_a_streak_counts_days_in_the_users_time_zone_with_late_events(owner):
    Profile.objects.create(user=owner, time_zone="Pacific/Auckland")
    badge = make_badge(key="three_days", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge, kind="streak", event_type="lesson.done", threshold=3
    )
    record(owner, "lesson.done", 0)
    record(owner, "lesson.done", 2)
    assert not Unlock.objects.exists()
    record(owner, "lesson.done", 1)  # arrives last, fills the gap
    assert Unlock.objects.filter(badge=badge).exists()


def test_a_sequence_in_order_within_seven_days(owner):
    badge = make_badge(key="onboarded", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge,
        kind="sequence",
        threshold=3,
        window_days=7,
        steps=["profile.completed", "tutorial.finished", "project.created"],
    )
    record(owner, "profile.completed", 0)
    record(owner, "project.created", 1)
    [card] = cards_for_user(owner.pk)
    assert card["requirements"][0]["text"] == "step 1 of 3"
    record(owner, "tutorial.finished", 0.5)
    assert Unlock.objects.filter(badge=badge).exists()


def test_a_weekly_goal_and_its_explanation(owner):
    badge = make_badge(key="busy_week", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge, event_type="workout.done", scope="week", threshold=3, label="workouts"
    )
    for day in (0, 1, 7, 8):  # two workouts in each of two weeks
        record(owner, "workout.done", day)
    assert not Unlock.objects.exists()
    record(owner, "workout.done", 9)
    assert Unlock.objects.filter(badge=badge).exists()
    state = RequirementProgress.objects.get(user=owner).state
    assert sorted(state["b"]) == ["2026-W10", "2026-W11"]


@pytest.mark.parametrize("threshold", [10])
def test_a_single_event_over_the_line(owner, threshold):
    badge = make_badge(key="ten_k", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge,
        event_type="run.finished",
        aggregation="single",
        field="km",
        threshold=threshold,
    )
    record(owner, "run.finished", km=6)
    record(owner, "run.finished", km=6)
    assert not Unlock.objects.exists()
    record(owner, "run.finished", km=10.2)
    assert Unlock.objects.filter(badge=badge).exists()


def test_events_only_reach_requirements_that_watch_their_type(
    owner, django_assert_max_num_queries
):
    for n in range(30):
        make_badge(
            key=f"other_{n}", requirements=[{"event_type": f"other.type{n}", "threshold": 1}]
        )
    make_badge(key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}])
    record(owner, "visit.created")  # builds the index once
    event = record_event(owner, "visit.created").event
    with django_assert_max_num_queries(20):
        evaluate_event(event.pk)
    assert RequirementProgress.objects.filter(user=owner).count() == 1


def test_the_event_type_index_is_rebuilt_when_rules_change(owner):
    record(owner, "quiz.passed")  # nothing watches it yet; the index is built
    badge = make_badge(key="quizzer", requirements=[{"event_type": "quiz.passed", "threshold": 1}])
    record(owner, "quiz.passed")
    assert Unlock.objects.filter(badge=badge).exists()
    badge.is_active = False
    badge.save()
    record(owner, "quiz.passed")
    assert RequirementProgress.objects.get(user=owner).value == 1


def test_a_hidden_badge_is_a_mystery_until_unlocked(owner):
    badge = make_badge(
        key="secret",
        name="Night Owl",
        description="Visit after midnight.",
        icon="🦉",
        requirements=[{"event_type": "visit.created", "threshold": 2}],
    )
    badge.hidden = True
    badge.save()
    record(owner, "visit.created")
    [card] = cards_for_user(owner.pk)
    assert (card["name"], card["icon"], card["hidden"], card["requirements"]) == (
        "Mystery badge",
        "❓",
        True,
        [],
    )
    assert "Night Owl" not in str(card)
    record(owner, "visit.created")
    [card] = cards_for_user(owner.pk)
    assert (card["name"], card["hidden"]) == ("Night Owl", False)


def test_segmented_badges_are_neither_shown_nor_evaluated_for_others(owner, second_user):
    from django.contrib.auth.models import Group

    pros = Group.objects.create(name="pro")
    pros.user_set.add(owner)
    by_group = make_badge(
        key="pro_only", requirements=[{"event_type": "visit.created", "threshold": 1}]
    )
    by_group.segment_group = pros
    by_group.save()
    by_attribute = make_badge(
        key="north_team", requirements=[{"event_type": "visit.created", "threshold": 1}]
    )
    by_attribute.segment_attribute, by_attribute.segment_value = "team", "north"
    by_attribute.save()
    Profile.objects.create(user=second_user, attributes={"team": "north"})

    record(owner, "visit.created")
    record(second_user, "visit.created")
    assert sorted(Unlock.objects.values_list("user__username", "badge__key")) == [
        ("owner", "pro_only"),
        ("second", "north_team"),
    ]
    assert [c["key"] for c in cards_for_user(owner.pk)] == ["pro_only"]
    assert [c["key"] for c in cards_for_user(second_user.pk)] == ["north_team"]
    assert cards_for_user(None) == []


def test_a_composite_unlocks_when_its_badges_do_and_explains_itself(owner):
    visitor = make_badge(
        key="visitor", requirements=[{"event_type": "visit.created", "threshold": 1}]
    )
    poster = make_badge(
        key="poster", requirements=[{"event_type": "image.posted", "threshold": 1}]
    )
    all_round = make_badge(key="all_round", requirements=[])
    both = BadgeRequirement.objects.create(
        badge=all_round, kind="composite", threshold=0, composite_mode="all"
    )
    both.composite_badges.set([visitor, poster])
    legend = make_badge(key="legend", requirements=[])  # a composite of a composite
    BadgeRequirement.objects.create(
        badge=legend, kind="composite", threshold=0, composite_mode="any"
    ).composite_badges.set([all_round])

    record(owner, "visit.created")
    card = next(c for c in cards_for_user(owner.pk) if c["key"] == "all_round")
    assert card["requirements"][0]["text"] == "1 of 2 badges"
    assert not Unlock.objects.filter(badge=all_round).exists()

    result = record(owner, "image.posted")
    assert set(result.unlocked_badge_ids) == {poster.pk, all_round.pk, legend.pk}
    assert Unlock.objects.filter(user=owner).count() == 4


def test_the_admin_refuses_composites_that_require_themselves(client, owner):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    first = make_badge(key="first", requirements=[])
    second = make_badge(key="second", requirements=[])
    BadgeRequirement.objects.create(
        badge=second, kind="composite", threshold=0
    ).composite_badges.set([first])

    def post(badge, parts):
        return client.post(
            f"/admin/achievements/badge/{badge.pk}/change/",
            {
                "key": badge.key,
                "name": badge.name,
                "description": "",
                "icon": "",
                "is_active": "on",
                "sort_order": "0",
                "requirements-TOTAL_FORMS": "1",
                "requirements-INITIAL_FORMS": "0",
                "requirements-MIN_NUM_FORMS": "1",
                "requirements-MAX_NUM_FORMS": "1000",
                "requirements-0-kind": "composite",
                "requirements-0-composite_mode": "all",
                "requirements-0-composite_badges": [p.pk for p in parts],
                "requirements-0-threshold": "0",
                "requirements-0-aggregation": "count",
                "requirements-0-operator": ">=",
                "requirements-0-scope": "all_time",
                "requirements-0-window_days": "0",
                "requirements-0-streak_unit": "day",
                "requirements-0-steps": "[]",
                "requirements-0-filters": "{}",
            },
        ).content.decode()

    assert "A badge cannot require itself." in post(first, [first])
    page = post(first, [second])
    assert "would require each other in a circle: Second → First → Second." in page
    assert not first.requirements.exists()
