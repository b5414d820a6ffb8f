"""Every rule kind through the real engine: recorded events, stored state, unlocks, cards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Profile
from achievements import index
from achievements.cards import cards_for_user, cards_for_users
from achievements.engine import evaluate_composites, evaluate_event, evaluate_events
from achievements.events import record_event
from achievements.models import BadgeRequirement, RequirementProgress, Unlock
from tests.achievements.test_admin import _inline_post
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


VISITS_5 = {"event_type": "visit.created", "threshold": 5}


def test_a_batch_and_the_cards_pushed_after_it_read_no_rule_rows(owner):
    """Badges, requirements and composite parts come from the rules index."""
    badge = make_badge(
        key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}]
    )
    # A first batch builds the index and records the badge's first version.
    evaluate_events([record_event(owner, "visit.created").event.pk])
    event = record_event(owner, "visit.created").event
    with CaptureQueriesContext(connection) as queries:
        evaluate_events([event.pk])
        cards = cards_for_users({owner.pk: {badge.pk}})
    rule_tables = ('"achievements_badge"', '"achievements_badgerequirement"', "composite_badges")
    assert [q["sql"] for q in queries if any(t in q["sql"] for t in rule_tables)] == []
    assert [(c["key"], c["current"], c["target"]) for c in cards[owner.pk]] == [
        ("visits", "2", "5")
    ]


def test_changing_a_composites_parts_reaches_the_rules_index(owner):
    first = make_badge(key="first", requirements=[{"event_type": "visit.created", "threshold": 1}])
    second = make_badge(key="second", requirements=[{"event_type": "post.done", "threshold": 1}])
    combo = make_badge(key="combo", requirements=[])
    part = BadgeRequirement.objects.create(badge=combo, kind="composite", threshold=0)
    part.composite_badges.set([first])

    def parts() -> list[str]:
        [cached] = [r for r in index.active_requirements() if r.pk == part.pk]
        return sorted(b.key for b in cached.composite_badges.all())

    assert parts() == ["first"]
    part.composite_badges.add(second)  # no save of the requirement itself
    assert parts() == ["first", "second"]
    record(owner, "visit.created")
    assert not Unlock.objects.filter(badge=combo).exists()  # "all" now needs both
    record(owner, "post.done")
    assert Unlock.objects.filter(badge=combo).exists()


def test_an_unlock_no_composite_is_made_of_costs_the_composite_check_no_query(
    owner, django_assert_num_queries
):
    first = make_badge(key="first", requirements=[{"event_type": "visit.created", "threshold": 1}])
    lone = make_badge(key="lone", requirements=[{"event_type": "post.done", "threshold": 1}])
    combo = make_badge(key="combo", requirements=[])
    part = BadgeRequirement.objects.create(badge=combo, kind="composite", threshold=0)
    part.composite_badges.set([first])
    index.active_requirements()  # built
    with django_assert_num_queries(0):
        assert evaluate_composites(owner.pk, [lone.pk]) == []
    record(owner, "visit.created")  # a part still brings its composite
    assert Unlock.objects.filter(badge=combo).exists()


def test_the_rules_index_is_replaced_again_when_a_change_commits(
    owner, django_capture_on_commit_callbacks
):
    """Another process may rebuild from the old rows between the save and the commit."""
    badge = make_badge(
        key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}]
    )
    with django_capture_on_commit_callbacks(execute=True):
        badge.name = "Visitor"
        badge.save()
        at_save = cache.get(index.VERSION_KEY)
    assert cache.get(index.VERSION_KEY) != at_save
    assert [b.name for b in index.active_badges()] == ["Visitor"]


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
        data = _inline_post(
            kind="composite",
            composite_badges=[p.pk for p in parts],
            threshold="0",
            event_type="",
        )
        data.update(key=badge.key, name=badge.name)
        return client.post(f"/admin/achievements/badge/{badge.pk}/change/", data).content.decode()

    assert "A badge cannot require itself." in post(first, [first])
    page = post(first, [second])
    assert "would require each other in a circle: Second → First → Second." in page
    assert not first.requirements.exists()


def make_tiered_badge(**requirement):
    badge = make_badge(key="explorer", requirements=[])
    badge.tiers = [
        {"name": "Bronze", "threshold": 2},
        {"name": "Silver", "threshold": 4},
        {"name": "Gold", "threshold": 6},
    ]
    badge.save()
    BadgeRequirement.objects.create(
        badge=badge,
        event_type="visit.created",
        aggregation="distinct",
        field="place_id",
        threshold=2,
        **requirement,
    )
    return badge


def test_a_tiered_badge_unlocks_each_tier_once_and_explains_the_next(owner):
    badge = make_tiered_badge()
    record(owner, "visit.created", place_id=1)
    record(owner, "visit.created", place_id=1)  # not a new place
    assert not Unlock.objects.exists()
    result = record(owner, "visit.created", place_id=2)
    assert result.unlocked_badge_ids == [badge.pk]
    [card] = cards_for_user(owner.pk)
    assert (card["completed"], card["tier"], card["next_tier"]) == (True, "Bronze", "Silver")
    assert card["requirements"][0]["text"] == "2 of 4 different places for Silver"
    assert card["percent"] == 50  # towards Silver, not the 100% of an ended badge

    # One event may cross two tiers at once (a sum can jump); here, two new places.
    for place in (3, 4, 5):
        record(owner, "visit.created", place_id=place)
    assert list(
        Unlock.objects.filter(badge=badge).order_by("tier").values_list("tier", "period")
    ) == [(1, ""), (2, "")]
    user_badge = badge.user_badges.get(user=owner)
    assert user_badge.tier == 2
    record(owner, "visit.created", place_id=6)
    [card] = cards_for_user(owner.pk)
    assert (card["tier"], card["next_tier"], card["ongoing"]) == ("Gold", "", False)
    # Re-delivery and more events never write a tier twice.
    record(owner, "visit.created", place_id=7)
    assert Unlock.objects.filter(badge=badge).count() == 3


def test_a_tiered_streak_is_graded_on_the_longest_streak(owner):
    badge = make_badge(key="regular", requirements=[])
    badge.tiers = [{"name": "Bronze", "threshold": 2}, {"name": "Silver", "threshold": 3}]
    badge.save()
    BadgeRequirement.objects.create(
        badge=badge, kind="streak", event_type="lesson.done", threshold=2
    )
    for day in (0, 1, 2, 5):  # a 3-day streak, broken, then a new one starts
        record(owner, "lesson.done", day)
    assert badge.user_badges.get(user=owner).tier == 2


def test_a_repeatable_badge_is_earned_once_per_week_and_each_earning_kept(owner):
    Profile.objects.create(user=owner, time_zone="America/New_York")
    badge = make_badge(key="weekly_three", requirements=[])
    badge.repeat = "week"
    badge.save()
    BadgeRequirement.objects.create(
        badge=badge, event_type="workout.done", threshold=3, scope="week"
    )
    # START is Monday 2 March 2026 (week 10); three workouts that week ...
    for day in (0, 1, 2):
        record(owner, "workout.done", day)
    record(owner, "workout.done", 3)  # a fourth the same week earns nothing more
    # ... two the next week, then a late one for week 11 that completes it.
    record(owner, "workout.done", 7)
    record(owner, "workout.done", 8)
    assert Unlock.objects.filter(badge=badge).count() == 1
    late = record(owner, "workout.done", 9.5)
    assert late.unlocked_badge_ids == [badge.pk]
    assert sorted(Unlock.objects.filter(badge=badge).values_list("period", flat=True)) == [
        "2026-W10",
        "2026-W11",
    ]
    # Sunday 15 March 23:30 in New York is Monday in UTC: it counts in week 11.
    sunday_night = record_event(
        owner,
        "workout.done",
        occurred_at=datetime(2026, 3, 16, 3, 30, tzinfo=UTC),
    ).event
    evaluate_event(sunday_night.pk)
    assert Unlock.objects.filter(badge=badge).count() == 2
    [card] = cards_for_user(owner.pk)
    assert (card["completed"], card["times_earned"], card["repeat"]) == (True, 2, "every week")


def test_an_event_for_an_old_period_earns_that_period(owner):
    badge = make_badge(key="daily_two", requirements=[])
    badge.repeat = "day"
    badge.save()
    BadgeRequirement.objects.create(
        badge=badge, event_type="quiz.passed", threshold=2, scope="day"
    )
    record(owner, "quiz.passed", 5)
    record(owner, "quiz.passed", 0)
    record(owner, "quiz.passed", 0.25)  # day 0 is complete, though day 5 came first
    assert list(Unlock.objects.filter(badge=badge).values_list("period", flat=True)) == [
        "2026-03-02"
    ]


def test_toasts_name_the_tier_and_count_each_earning(owner, client):
    from achievements.cards import unseen_unlocks

    weekly = make_badge(key="weekly_two", requirements=[])
    weekly.repeat = "week"
    weekly.save()
    BadgeRequirement.objects.create(badge=weekly, event_type="gym.done", threshold=2, scope="week")
    tiered = make_tiered_badge()
    for day in (0, 1, 7, 8):
        record(owner, "gym.done", day)
    for place in range(4):
        record(owner, "visit.created", place_id=place)
    headlines = [toast["headline"] for toast in unseen_unlocks(owner.pk, limit=10)]
    assert headlines == [
        "Badge unlocked",
        "Earned again (2 times)",
        "Badge unlocked (Bronze)",
        "Silver tier reached",
    ]
    # Both still have something to earn, so both stay under "In progress".
    client.force_login(owner)
    page = client.get("/badges/").content.decode()
    in_progress, done = page.split('id="earned-heading"')
    assert f'id="badge-{tiered.key}"' in in_progress and f'id="badge-{weekly.key}"' in in_progress
    assert "Earned 2 times</span> · every week" in in_progress and "Silver tier" in in_progress
    assert '<span id="earned-count">2</span> of 2 earned' in page


def test_rules_comparing_a_field_with_the_wrong_type_are_refused(owner):
    from django.core.exceptions import ValidationError

    from achievements.models import EventType

    EventType.objects.create(
        name="workout.done", fields={"duration_seconds": "number", "outdoor": "boolean"}
    )
    # No declaration for visit.created: its stored events tell the types.
    record_event(owner, "visit.created", payload={"place_id": 3, "source": "mobile"})
    badge = make_badge(key="typed", requirements=[])

    def problems(**fields):
        requirement = BadgeRequirement(badge=badge, threshold=1, **fields)
        try:
            requirement.full_clean()
        except ValidationError as exc:
            return exc.message_dict
        return {}

    def where(field, op, value):
        return {"all": [{"field": field, "op": op, "value": value}]}

    assert problems(event_type="workout.done", filters=where("duration_seconds", ">=", "600")) == {
        "filters": [
            "Filter: duration_seconds is a number in workout.done events (declared under Event "
            'types), so compare it with a number, not the string "600".'
        ]
    }
    assert problems(event_type="workout.done", filters=where("outdoor", ">", True)) == {
        "filters": [
            "Filter: outdoor is a boolean in workout.done events (declared under Event types); "
            "compare it with == or !=."
        ]
    }
    assert problems(event_type="visit.created", filters=where("source", "==", 1)) == {
        "filters": [
            "Filter: source is a string in the stored visit.created events, so compare it "
            "with a string, not the number 1."
        ]
    }
    assert problems(event_type="visit.created", aggregation="sum", field="source") == {
        "field": [
            "source is a string in the stored visit.created events; sum of a numeric payload "
            "field needs a number."
        ]
    }
    # Right types, and fields nobody knows anything about, are fine.
    assert problems(event_type="workout.done", filters=where("duration_seconds", ">=", 600)) == {}
    assert problems(event_type="visit.created", filters=where("mood", "==", "happy")) == {}
    assert problems(event_type="visit.created", aggregation="max", field="place_id") == {}


def test_event_type_field_declarations_are_validated(db):
    from django.core.exceptions import ValidationError

    from achievements.models import EventType

    with pytest.raises(ValidationError, match="the type must be one of number, string, boolean"):
        EventType(name="a.b", fields={"n": "integer"}).full_clean()
    with pytest.raises(ValidationError, match="use a payload key"):
        EventType(name="a.b", fields={"bad key": "number"}).full_clean()


def test_making_a_badge_repeatable_keeps_its_old_unlock_as_that_periods_earning(owner):
    from achievements.replay import replay_events

    badge = make_badge(key="daily_two_later", requirements=[])
    BadgeRequirement.objects.create(badge=badge, event_type="quiz.done", threshold=2, scope="day")
    record(owner, "quiz.done", 0)
    record(owner, "quiz.done", 0.1)
    assert Unlock.objects.filter(badge=badge).count() == 1
    badge.repeat = "day"
    badge.save()
    replay_events()
    assert Unlock.objects.filter(badge=badge).count() == 1  # day 0 was already earned
    record(owner, "quiz.done", 1)
    late = record(owner, "quiz.done", 1.1)
    second = Unlock.objects.get(badge=badge, period="2026-03-03")
    # Its provenance is the event that completed this day, not the first day's events.
    assert second.event is not None and second.event_ids == [second.event.event_id]
    assert late.unlock_ids == [second.pk]
    [card] = [c for c in cards_for_user(owner.pk) if c["key"] == badge.key]
    assert card["times_earned"] == 2


def test_a_badge_with_unlocks_can_still_be_deleted(owner):
    from achievements.versions import record_version

    badge = make_badge(key="gone", requirements=[{"event_type": "visit.created", "threshold": 1}])
    record_version(badge, source="test")
    record(owner, "visit.created")
    assert Unlock.objects.get(badge=badge).version is not None
    badge.delete()
    assert not Unlock.objects.exists()


def test_tiers_on_rolling_progress_kept_before_peaks_were_tracked(db):
    from achievements.progress import Spec, peak
    from achievements.rules import Scope

    spec = Spec(
        1, __import__("decimal").Decimal(2), event_type="v.x", scope=Scope.ROLLING, window_days=7
    )
    # Six events in one week, then one two months later, without the "p" key.
    state = {"b": {"2026-01-01": "3", "2026-01-05": "3", "2026-03-05": "1"}, "met": True}
    assert peak(spec, state) == 6
