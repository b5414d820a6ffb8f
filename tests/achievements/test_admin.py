from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils.html import escape

from achievements.events import record_event
from achievements.models import Badge, BadgeRequirement, Event
from tests.factories import make_places_badge


@pytest.fixture
def admin_client(client, db):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(admin)
    return client


def _inline_post(**requirement):
    data = {
        "key": "photo_fan",
        "name": "Photo fan",
        "description": "",
        "icon": "",
        "is_active": "on",
        "sort_order": "0",
        # As the form renders them: a badge that never expires.
        "valid_days": "0",
        "remind_days": "0",
        "requirements-TOTAL_FORMS": "1",
        "requirements-INITIAL_FORMS": "0",
        "requirements-MIN_NUM_FORMS": "1",
        "requirements-MAX_NUM_FORMS": "1000",
        # The badge's translations, none here.
        "translations-TOTAL_FORMS": "0",
        "translations-INITIAL_FORMS": "0",
        "translations-MIN_NUM_FORMS": "0",
        "translations-MAX_NUM_FORMS": "1000",
    }
    defaults = {
        "kind": "aggregate",
        "filters": "{}",
        "window_days": "0",
        "streak_unit": "day",
        "steps": "[]",
        "composite_mode": "all",
        "event_type": "image.posted",
        "aggregation": "count",
        "field": "",
        "operator": ">=",
        "threshold": "3",
        "scope": "all_time",
        "label": "",
    }
    for name, value in {**defaults, **requirement}.items():
        data[f"requirements-0-{name}"] = value
    return data


def test_staff_create_a_badge_with_its_requirements_inline(admin_client):
    response = admin_client.post("/admin/achievements/badge/add/", _inline_post())
    assert response.status_code == 302
    requirement = BadgeRequirement.objects.get(badge__key="photo_fan")
    assert (requirement.event_type, requirement.threshold) == ("image.posted", 3)


@pytest.mark.parametrize(
    ("requirement", "message"),
    [
        ({"aggregation": "distinct", "field": ""}, "needs a payload field"),
        ({"event_type": "Image Posted"}, "Event type must be lower-case words"),
        ({"threshold": "0"}, "needs a threshold of at least 1"),
        ({"threshold": "-5"}, "greater than or equal to 0"),
        ({"kind": "sequence", "steps": '["a.done"]'}, "A sequence needs at least 2 steps"),
        ({"kind": "sequence", "steps": '["a.done", "Bad Step"]'}, "Step 2: event type must be"),
        ({"scope": "rolling", "window_days": "0"}, "A rolling scope needs a window of 1 to 366"),
        ({"filters": '{"some": []}'}, "Filter: a filter is {&quot;all&quot;: [...]}"),
        (
            {"filters": '{"all": [{"field": "x", "op": "~", "value": 1}]}'},
            "Filter: condition 1: unknown operator",
        ),
        ({"kind": "streak", "event_type": ""}, "Name the event type this requirement watches."),
        ({"aggregation": "sum", "field": ""}, "needs a payload field"),
        ({"aggregation": "median"}, "Select a valid choice"),
        ({"field": "place id", "aggregation": "distinct"}, "Use a payload key"),
    ],
)
def test_an_invalid_requirement_is_refused_with_a_message_and_nothing_saved(
    admin_client, requirement, message
):
    response = admin_client.post("/admin/achievements/badge/add/", _inline_post(**requirement))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Badge.objects.exists()


@pytest.mark.parametrize(
    ("badge", "requirement", "message"),
    [
        ({"tiers": '[{"name": "Bronze", "threshold": 3}]'}, {}, "give between 2 and 10 tiers"),
        (
            {"tiers": '[{"name": "Bronze", "threshold": 5}, {"name": "Silver", "threshold": 9}]'},
            {},
            "Tiers: The badge unlocks at its first tier (Bronze, 5), so the requirement&#x27;s "
            "threshold must be 5, not 3.",
        ),
        (
            {"tiers": '[{"name": "Bronze", "threshold": 3}, {"name": "Silver", "threshold": 9}]'},
            {"kind": "sequence", "steps": '["a.done", "b.done"]', "threshold": "3"},
            "Tiers need an aggregate or streak requirement",
        ),
        (
            {"repeat": "week"},
            {"scope": "day"},
            "Repeat: Requirement 1: a badge earned every week counts each requirement per week",
        ),
        ({"repeat": "year"}, {}, "Select a valid choice"),
    ],
)
def test_tiers_and_repeats_are_checked_against_the_requirements(
    admin_client, badge, requirement, message
):
    data = {**_inline_post(**requirement), **badge}
    response = admin_client.post("/admin/achievements/badge/add/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Badge.objects.exists()


def test_staff_create_a_tiered_badge(admin_client):
    tiers = '[{"name": "Bronze", "threshold": 3}, {"name": "Silver", "threshold": 9}]'
    response = admin_client.post(
        "/admin/achievements/badge/add/", {**_inline_post(), "tiers": tiers, "repeat": ""}
    )
    assert response.status_code == 302
    assert Badge.objects.get().tier_list()[1] == ("Silver", 9)


def test_the_badge_change_page_shows_the_threshold_as_typed(admin_client):
    badge = make_places_badge(threshold=5)
    page = admin_client.get(f"/admin/achievements/badge/{badge.pk}/change/").content.decode()
    assert 'name="requirements-0-threshold" value="5"' in page


def test_events_are_browsable_but_read_only(admin_client, owner):
    event = record_event(owner, "visit.created", payload={"place_id": 4}).event
    assert admin_client.get("/admin/achievements/event/").status_code == 200
    page = admin_client.get(f"/admin/achievements/event/{event.pk}/change/")
    assert page.status_code == 200
    assert "&quot;place_id&quot;: 4" in page.content.decode()
    assert admin_client.get("/admin/achievements/event/add/").status_code == 403
    admin_client.post(f"/admin/achievements/event/{event.pk}/change/", {"event_type": "x.y"})
    assert Event.objects.get().event_type == "visit.created"
    assert admin_client.post(f"/admin/achievements/event/{event.pk}/delete/").status_code == 403


def test_user_badges_are_browsable(admin_client, owner):
    assert admin_client.get("/admin/achievements/userbadge/").status_code == 200


def test_the_admin_is_closed_to_non_staff(client, owner):
    client.force_login(owner)
    assert client.get("/admin/achievements/badge/").status_code == 302


def test_staff_see_why_a_user_has_or_lacks_a_badge(admin_client, owner):
    from achievements.engine import evaluate_event
    from achievements.models import UserBadge

    make_places_badge(threshold=5)
    for place in (1, 2):
        evaluate_event(record_event(owner, "visit.created", payload={"place_id": place}).event.pk)
    user_badge = UserBadge.objects.get(user=owner)
    page = admin_client.get(f"/admin/achievements/userbadge/{user_badge.pk}/change/")
    assert "2 of 5 different places" in page.content.decode()


def test_staff_preview_a_rule_change_before_applying_it(admin_client, owner, second_user):
    import json

    from achievements.engine import evaluate_event
    from achievements.models import BadgeRequirement, Unlock

    badge = make_places_badge(threshold=3)
    for user, places in ((owner, [1, 2]), (second_user, [1])):
        for place in places:
            evaluate_event(
                record_event(user, "visit.created", payload={"place_id": place}).event.pk
            )
    url = f"/admin/achievements/badge/{badge.pk}/preview/"
    page = admin_client.get(url).content.decode()
    assert "&quot;threshold&quot;: &quot;3&quot;" in page

    requirements = [
        {
            "kind": "aggregate",
            "event_type": "visit.created",
            "aggregation": "distinct",
            "field": "place_id",
            "threshold": "2",
        }
    ]
    response = admin_client.post(
        url, {"rule": json.dumps({"requirements": requirements}), "_preview": "Preview"}
    )
    body = response.content.decode()
    assert "Would newly qualify (no unlock yet)</th><td>1</td>" in body
    assert "owner" in body
    assert BadgeRequirement.objects.get(badge=badge).threshold == 3  # nothing saved

    bad = admin_client.post(
        url,
        {
            "rule": json.dumps({"requirements": [{**requirements[0], "aggregation": "median"}]}),
            "_preview": "Preview",
        },
    ).content.decode()
    assert "requirements[0].aggregation: Value &#x27;median&#x27; is not a valid choice" in bad

    response = admin_client.post(
        url, {"rule": json.dumps({"requirements": requirements}), "_apply": "Apply"}
    )
    assert response.status_code == 302
    assert BadgeRequirement.objects.get(badge=badge).threshold == 2
    assert not Unlock.objects.exists()  # applying changes rules; replay awards, silently

    # Tiers are part of the rule: the preview counts users per highest tier.
    tiered = {
        "tiers": [{"name": "Bronze", "threshold": 1}, {"name": "Silver", "threshold": 2}],
        "requirements": [{**requirements[0], "threshold": "1"}],
    }
    body = admin_client.post(
        url, {"rule": json.dumps(tiered), "_preview": "Preview"}
    ).content.decode()
    assert "Would hold Bronze as their highest tier</th><td>1</td>" in body
    assert "Would hold Silver as their highest tier</th><td>1</td>" in body
    mismatched = {**tiered, "requirements": requirements}
    body = admin_client.post(
        url, {"rule": json.dumps(mismatched), "_preview": "Preview"}
    ).content.decode()
    assert "requirement&#x27;s threshold must be 1, not 2" in body
    assert admin_client.post(url, {"rule": "[1]"}).status_code == 200


def test_the_preview_needs_change_permission(client, owner):
    badge = make_places_badge(threshold=3)
    client.force_login(owner)
    assert client.get(f"/admin/achievements/badge/{badge.pk}/preview/").status_code == 302


@pytest.mark.parametrize(
    "changelist", ["event/?received_at", "userbadge/?completed_at", "unlock/?unlocked_at"]
)
@pytest.mark.parametrize(
    "drill_down",
    [
        "__year=9999",
        "__year=99999999999999999999",
        "__year=2026&{field}__month=99999999999999999999",
        "__year=2026&{field}__month=12&{field}__day=99999999999999999999",
    ],
)
def test_a_date_drill_down_past_the_calendar_is_a_bad_filter_not_a_500(
    admin_client, changelist, drill_down
):
    field = changelist.split("?")[1]
    url = f"/admin/achievements/{changelist}{drill_down.format(field=field)}"
    response = admin_client.get(url)
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")  # how the admin answers any bad filter


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (DEEP, "rule: is nested too deeply (more than 32 levels)"),
        ('{"requirements": ' + DEEP + "}", "rule: is nested too deeply (more than 32 levels)"),
        (
            '{"requirements": [{"event_type": "visit.created", "threshold": 1, '
            '"label": "a\\u0000b"}]}',
            "badges[0].requirements[0].label: must not contain NUL characters",
        ),
        (
            '{"requirements": [{"event_type": "visit.created", "threshold": 1, '
            '"label": "\\ud800"}]}',
            "badges[0].requirements[0].label: must not contain unpaired surrogates",
        ),
        (
            '{"requirements": [{"event_type": "visit.created", "threshold": 1, "filters": '
            '{"all": [{"field": "x", "op": "==", "value": "\\u0000"}]}}]}',
            "badges[0].requirements[0].filters.all[0].value: must not contain NUL characters",
        ),
        (
            '{"tiers": [{"name": "Bronze\\u0000", "threshold": 1}], '
            '"requirements": [{"event_type": "visit.created", "threshold": 1}]}',
            "badges[0].tiers[0].name: must not contain NUL characters",
        ),
        (
            '{"requirements": [{"event_type": "visit.created", "threshold": 1, "filters": '
            '{"all": [{"field": "x", "op": "==", "value": 1e999}]}}]}',
            "badges[0].requirements[0].filters.all[0].value: must be a finite number",
        ),
    ],
)
@pytest.mark.parametrize("button", ["_preview", "_apply"])
def test_a_previewed_rule_nested_too_deeply_or_unstorable_is_named_and_nothing_saved(
    admin_client, rule, problem, button
):
    badge = make_places_badge(threshold=3)
    before = list(BadgeRequirement.objects.values())
    response = admin_client.post(
        f"/admin/achievements/badge/{badge.pk}/preview/", {"rule": rule, button: "1"}
    )
    assert response.status_code == 200
    assert problem in response.context["problems"][0]
    assert list(BadgeRequirement.objects.values()) == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tiers", DEEP, "This JSON is nested too deeply (more than 32 levels)."),
        ("requirements-0-filters", DEEP, "This JSON is nested too deeply (more than 32 levels)."),
        ("requirements-0-steps", DEEP, "This JSON is nested too deeply (more than 32 levels)."),
        (
            "tiers",
            '[{"name": "Bronze\\u0000", "threshold": 3}]',
            "[0].name: must not contain NUL characters.",
        ),
        (
            "tiers",
            '[{"name": "\\ud800", "threshold": 3}]',
            "[0].name: must not contain unpaired surrogates",
        ),
        (
            "requirements-0-filters",
            '{"all": [{"field": "x", "op": "==", "value": "\\u0000"}]}',
            "all[0].value: must not contain NUL characters.",
        ),
        (
            "requirements-0-filters",
            '{"all": [{"field": "x", "op": "==", "value": "\\udfff"}]}',
            "all[0].value: must not contain unpaired surrogates",
        ),
        (
            "requirements-0-filters",
            '{"all": [{"field": "x", "op": "==", "value": 1e999}]}',
            "all[0].value: must be a finite number.",
        ),
        ("requirements-0-steps", '["a.done", "b.done\\u0000"]', "[1]: must not contain NUL"),
    ],
)
def test_a_json_field_nested_too_deeply_or_unstorable_is_refused_and_shown_as_typed(
    admin_client, field, value, message
):
    response = admin_client.post(
        "/admin/achievements/badge/add/", {**_inline_post(), field: value}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert message in body
    assert f"{escape(value)}</textarea>" in body  # as typed
    assert not Badge.objects.exists()


@pytest.mark.parametrize("fields", [DEEP, '{"\\ud800": "number"}'])
def test_an_event_types_fields_are_checked_the_same_way(admin_client, fields):
    from achievements.models import EventType

    response = admin_client.post(
        "/admin/achievements/eventtype/add/", {"name": "a.b", "fields": fields}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["fields"]
    assert not EventType.objects.exists()


def test_changing_the_rule_of_a_badge_held_while_it_holds_offers_to_apply_it_now(admin_client):
    data = {**_inline_post(), "holds_while_met": "on"}
    assert admin_client.post("/admin/achievements/badge/add/", data).status_code == 302
    badge = Badge.objects.get(key="photo_fan")
    requirement = BadgeRequirement.objects.get(badge=badge)
    changed = {
        **data,
        "requirements-INITIAL_FORMS": "1",
        "requirements-0-id": str(requirement.pk),
        "requirements-0-badge": str(badge.pk),
        "requirements-0-threshold": "4",
    }
    response = admin_client.post(
        f"/admin/achievements/badge/{badge.pk}/change/", changed, follow=True
    )
    body = response.content.decode()
    assert "holds only while its rule holds" in body
    assert f"/admin/achievements/badge/reevaluate/?ids={badge.pk}" in body
