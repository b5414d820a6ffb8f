"""What the badge page's cards say (rarity, tiers, locks, repeat counts, a bar per
requirement) and its show and sort controls, through the Django test client."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts.models import Profile
from achievements import rarity
from achievements.cards import cards_for_user
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge
from tests.factories import make_badge, make_places_badge, make_user


def visit(user, place_id: int, n: int = 0) -> None:
    event = record_event(
        user, "visit.created", payload={"place_id": place_id}, event_id=f"v-{user.pk}-{n}"
    )
    evaluate_event(event.event.pk)


def card_of(user, key: str) -> dict:
    rarity.forget()
    return next(card for card in cards_for_user(user.pk) if card["key"] == key)


def test_rarity_counts_the_active_members_who_hold_a_badge(owner, second_user):
    make_places_badge(threshold=1)
    others = [make_user(username=f"member-{n}") for n in range(8)]
    assert card_of(owner, "places_visited_1")["rarity_text"] == "Nobody has earned it yet"
    visit(owner, 1)
    card = card_of(second_user, "places_visited_1")
    # 1 of 10 members.
    assert (card["rarity"], card["rarity_text"], card["rare"]) == (
        10.0,
        "Earned by 10% of members",
        False,
    )
    # Inactive members count neither above nor below the line.
    for other in others[:5]:
        other.is_active = False
        other.save()
    assert card_of(second_user, "places_visited_1")["rarity_text"] == "Earned by 20% of members"


def test_a_rare_badge_is_called_rare_and_a_tiny_share_is_not_rounded_to_zero(owner):
    make_places_badge(threshold=1)
    for n in range(150):
        make_user(username=f"crowd-{n}")
    visit(owner, 1)
    card = card_of(owner, "places_visited_1")
    assert (card["rare"], card["rarity_text"]) == (True, "Earned by fewer than 1% of members")


def test_a_card_counts_its_own_user_even_before_the_figures_are_taken_again(owner):
    make_places_badge(threshold=1)
    rarity.forget()
    rarity.shares()  # figures taken before the unlock, kept for a minute
    visit(owner, 1)
    [card] = cards_for_user(owner.pk)
    assert card["completed"] and card["rarity_text"] == "Earned by 100% of members"


def test_a_segmented_badge_counts_only_those_who_can_earn_it(owner, second_user):
    group = Group.objects.create(name="crew")
    owner.groups.add(group)
    make_user(username="outsider")
    badge = make_places_badge(threshold=1)
    badge.segment_group = group
    badge.save()
    visit(owner, 1)
    assert card_of(owner, "places_visited_1")["rarity_text"] == (
        "Earned by 100% of those who can earn it"
    )
    # A profile attribute segment.
    badge.segment_group = None
    badge.segment_attribute, badge.segment_value = "plan", "pro"
    badge.save()
    Profile.objects.update_or_create(user=owner, defaults={"attributes": {"plan": "pro"}})
    Profile.objects.update_or_create(user=second_user, defaults={"attributes": {"plan": "pro"}})
    assert card_of(owner, "places_visited_1")["rarity_text"] == (
        "Earned by 50% of those who can earn it"
    )


def test_rarity_is_counted_at_most_once_a_minute_per_process(owner, django_assert_num_queries):
    make_places_badge(threshold=1)
    rarity.forget()
    rarity.shares()
    with django_assert_num_queries(0):
        rarity.shares()


def test_a_tiered_card_lists_its_tiers_with_how_far_the_next_one_is(owner):
    badge = make_places_badge(threshold=2)
    badge.tiers = [
        {"name": "Bronze", "threshold": 2},
        {"name": "Silver", "threshold": 4},
        {"name": "Gold", "threshold": 8},
    ]
    badge.save()
    for n in range(3):
        visit(owner, n, n)
    card = card_of(owner, "places_visited_2")
    assert card["locked"] is False and card["tier"] == "Bronze"
    assert [
        (tier["name"], tier["threshold"], tier["reached"], tier["next"], tier["to_go"])
        for tier in card["tiers"]
    ] == [
        ("Bronze", "2", True, False, ""),
        ("Silver", "4", False, True, "1"),
        ("Gold", "8", False, False, ""),
    ]
    assert {tier["unit"] for tier in card["tiers"]} == {"different places"}


def test_each_requirement_has_its_own_share_and_a_hidden_badge_shows_none(owner):
    make_badge(
        key="two_parts",
        requirements=[
            {"event_type": "visit.created", "threshold": 4, "label": "visits"},
            {"event_type": "image.posted", "threshold": 2, "label": "photos"},
        ],
    )
    visit(owner, 1)
    card = card_of(owner, "two_parts")
    assert [(r["text"], r["percent"]) for r in card["requirements"]] == [
        ("1 of 4 visits", 25),
        ("0 of 2 photos", 0),
    ]
    assert card["locked"] is True
    Badge.objects.filter(key="two_parts").update(hidden=True)
    card = card_of(owner, "two_parts")
    assert (card["hidden"], card["locked"], card["requirements"], card["tiers"]) == (
        True,
        False,
        [],
        [],
    )


def test_a_repeatable_card_says_how_many_times_and_when_last(owner, client):
    badge = make_badge(
        key="daily_visit",
        requirements=[{"event_type": "visit.created", "threshold": 1, "label": "visits"}],
    )
    badge.repeat = "day"
    badge.save()
    badge.requirements.update(scope="day")
    now = timezone.now()
    for days_ago in (2, 1):
        event = record_event(
            owner,
            "visit.created",
            payload={"place_id": 1},
            event_id=f"d-{days_ago}",
            occurred_at=now - timedelta(days=days_ago),
        )
        evaluate_event(event.event.pk)
    card = card_of(owner, "daily_visit")
    assert card["times_earned"] == 2 and card["last_earned_on"]
    client.force_login(owner)
    page = client.get("/badges/").content.decode()
    assert "Earned 2 times</span> · every day" in page
    assert f"last on {card['last_earned_on']}" in page


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("", ["places_visited_4", "places_visited_3", "places_visited_1", "places_visited_2"]),
        ("?show=earned", ["places_visited_1", "places_visited_2"]),
        ("?show=in_progress", ["places_visited_4", "places_visited_3"]),
        (
            "?sort=closest",
            ["places_visited_3", "places_visited_4", "places_visited_1", "places_visited_2"],
        ),
        (
            "?sort=recent",
            ["places_visited_4", "places_visited_3", "places_visited_2", "places_visited_1"],
        ),
        (
            "?show=in_progress&sort=closest",
            ["places_visited_3", "places_visited_4"],
        ),
    ],
)
def test_the_page_shows_and_sorts_as_asked(client, owner, query, shown):
    for threshold, order in ((4, 0), (1, 1), (3, 2), (2, 3)):
        badge = make_places_badge(threshold=threshold)
        badge.sort_order = order
        badge.save()
    visit(owner, 1, 1)
    visit(owner, 2, 2)  # 1 and 2 earned (2 after 1); 3 at 2 of 3, 4 at 2 of 4
    client.force_login(owner)
    response = client.get(f"/badges/{query}")
    assert response.status_code == 200
    keys = [card["key"] for card in response.context["in_progress"] + response.context["earned"]]
    assert keys == shown


def test_rarest_first_puts_the_least_held_badge_first(client, owner, second_user):
    for threshold in (1, 2):
        make_places_badge(threshold=threshold)
    visit(owner, 1, 1)
    visit(owner, 2, 2)
    visit(second_user, 1, 1)  # threshold 1: both hold it; threshold 2: only the owner
    client.force_login(owner)
    earned = lambda query: [c["key"] for c in client.get(query).context["earned"]]  # noqa: E731
    assert earned("/badges/") == ["places_visited_1", "places_visited_2"]
    assert earned("/badges/?sort=rarest") == ["places_visited_2", "places_visited_1"]


def test_an_htmx_request_gets_only_the_lists_with_the_count_and_what_changed(client, owner):
    make_places_badge(threshold=1)
    client.force_login(owner)
    response = client.get("/badges/?show=earned", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="badge-lists"')
    assert '<span id="earned-count" hx-swap-oob="true">0</span>' in body
    assert "0 badges, earned only, suggested order." in body
    assert "<h1>" not in body


@pytest.mark.parametrize(
    ("query", "field", "value"),
    [
        ("?sort=loudest", "sort", "loudest"),
        ("?show=everything&sort=closest", "show", "everything"),
    ],
)
def test_an_unknown_choice_is_refused_by_name_and_the_page_still_shows(
    client, owner, query, field, value
):
    make_places_badge(threshold=1)
    client.force_login(owner)
    for headers, status in (({}, 400), ({"HX-Request": "true"}, 422)):
        response = client.get(f"/badges/{query}", headers=headers)
        assert response.status_code == status
        body = response.content.decode()
        assert f'id="id_{field}_error"' in body and value in body
        assert "places_visited_1" in body  # the badges, in the suggested order


def test_a_held_tier_shows_how_rare_that_tier_is(owner):
    badge = make_places_badge(threshold=1)
    badge.tiers = [{"name": "Bronze", "threshold": 1}, {"name": "Gold", "threshold": 3}]
    badge.save()
    crowd = [make_user(username=f"tier-{n}") for n in range(9)]
    for n, user in enumerate(crowd[:4]):
        visit(user, 1, n)  # four hold Bronze
    for place in range(3):
        visit(owner, place, 100 + place)  # the owner holds Gold
    card = card_of(owner, "places_visited_1")
    assert card["tier"] == "Gold"
    assert card["rarity_text"] == "Earned by 10% of members"  # 1 of 10 hold Gold
    assert card_of(crowd[0], "places_visited_1")["rarity_text"] == "Earned by 50% of members"


def test_a_failed_count_leaves_the_page_up_and_says_nothing_of_rarity(client, owner, monkeypatch):
    from django.db import DatabaseError

    make_places_badge(threshold=1)

    def broken() -> rarity.Shares:
        raise DatabaseError("statement timeout")

    monkeypatch.setattr(rarity, "count", broken)
    rarity.forget()
    client.force_login(owner)
    response = client.get("/badges/")
    assert response.status_code == 200
    assert 'class="badge-rarity' not in response.content.decode()
    # Kept figures outlive a failure.
    monkeypatch.undo()
    rarity.forget()
    rarity.shares()
    monkeypatch.setattr(rarity, "count", broken)
    kept = rarity._kept
    assert kept is not None
    monkeypatch.setattr(rarity, "_kept", (0.0, kept[1]))  # due for a recount
    assert rarity.shares().counted


def test_recently_earned_follows_the_latest_earning_not_the_first(client, owner):
    from datetime import timedelta

    from django.utils import timezone

    daily = make_badge(
        key="daily_visit",
        requirements=[{"event_type": "visit.created", "threshold": 1, "label": "visits"}],
    )
    daily.repeat = "day"
    daily.save()
    daily.requirements.update(scope="day")
    make_places_badge(threshold=1)
    now = timezone.now()
    first = record_event(
        owner, "visit.created", payload={"place_id": 1}, occurred_at=now - timedelta(days=3)
    )
    evaluate_event(first.event.pk)  # both earned three days ago
    later = record_event(owner, "visit.created", payload={"place_id": 1}, event_id="today")
    evaluate_event(later.event.pk)  # the daily one earned again today
    client.force_login(owner)
    earned = client.get("/badges/?show=earned&sort=recent").context["earned"]
    assert [card["key"] for card in earned] == ["daily_visit", "places_visited_1"]


def test_an_htmx_request_with_an_unknown_choice_gets_the_errors_by_the_controls(client, owner):
    make_places_badge(threshold=1)
    client.force_login(owner)
    response = client.get("/badges/?sort=loudest", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert response.status_code == 422
    assert '<form id="badge-filters"' in body and 'hx-swap-oob="true"' in body
    assert 'id="id_sort_error"' in body
    # A valid one leaves the controls alone (focus stays where it is).
    ok = client.get("/badges/?sort=closest", headers={"HX-Request": "true"}).content.decode()
    assert '<form id="badge-filters"' not in ok
    # The page's own refetch after a push says nothing to screen readers.
    quiet = client.get("/badges/?sort=closest&relist=1", headers={"HX-Request": "true"})
    assert 'id="badge-filter-status"' not in quiet.content.decode()
