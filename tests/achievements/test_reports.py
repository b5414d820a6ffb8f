"""Product reports: permission, filters, numbers, CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from django.utils.formats import date_format

from achievements import reports
from achievements.events import record_event
from achievements.models import BadgeRequirement
from achievements.report_views import EXPORTS
from tests.factories import make_badge, make_places_badge, make_user


@pytest.fixture
def analyst(client, db):
    user = make_user(username="analyst", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_reports"))
    client.force_login(user)
    return client


@pytest.fixture
def history(db, django_capture_on_commit_callbacks):
    """Three users: one holds 5 Places Visited, one is at 4 of 5, one at 1."""
    badge = make_places_badge(threshold=5)
    tiered = make_badge(key="regular", name="=Regular", requirements=[])
    tiered.tiers = [{"name": "Bronze", "threshold": 1}, {"name": "Silver", "threshold": 3}]
    tiered.save()
    BadgeRequirement.objects.create(badge=tiered, event_type="image.posted", threshold=1)
    users = [make_user(username=name) for name in ("ana", "ben", "cy")]
    with django_capture_on_commit_callbacks(execute=True):
        for user, places in zip(users, (5, 4, 1), strict=True):
            for place in range(places):
                record_event(user, "visit.created", payload={"place_id": place})
        for n in range(3):
            record_event(users[0], "image.posted", payload={"image_id": n})
        record_event(users[1], "image.posted", payload={"image_id": 9})
    return badge, tiered


def test_reports_need_the_view_reports_permission(client, db):
    client.force_login(make_user(username="staffer", is_staff=True))
    assert client.get("/admin/reports/").status_code == 403
    client.logout()
    assert client.get("/admin/reports/").status_code == 302  # to the admin log-in


def test_the_page_shows_unlocks_rarity_and_near_misses(analyst, history):
    page = analyst.get("/admin/reports/")
    assert page.status_code == 200
    body = page.content.decode()
    assert '<svg class="report-chart"' in body and 'role="img"' in body
    # Scales on both sides, dated marks, a tooltip per bar; it scrolls on a phone.
    assert 'class="tick" text-anchor="end">0</text>' in body
    assert 'class="tick total">' in body and "Running total (right scale)" in body
    assert "in all</title></rect>" in body
    assert 'class="report-chart-scroll" role="region" tabindex="0"' in body
    rarity = {(row["badge"], row["tier"]): row for row in page.context["rarity"]}
    assert rarity[("5 Places Visited", "")]["holders"] == 1
    assert rarity[("5 Places Visited", "")]["percent"] == pytest.approx(33.3)
    assert rarity[("=Regular", "Bronze")]["holders"] == 2  # Silver holders hold Bronze too
    assert rarity[("=Regular", "Silver")]["holders"] == 1
    assert [(row["user"], row["percent"]) for row in page.context["near_misses"]] == [("ben", 80)]
    today = timezone.localdate()
    [row] = [r for r in page.context["unlocks"] if r["period"] == today]
    assert row["unlocks"] == 4 and page.context["unlocks"][-1]["cumulative"] == 4


def test_every_table_downloads_as_csv_with_formulas_defused(analyst, history):
    response = analyst.get("/admin/reports/?export=rarity&sort=badge")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["badge", "key", "tier", "holders", "active_users", "percent"]
    # A spreadsheet would run "=Regular" as a formula.
    assert [row[0] for row in rows[1:]] == ["5 Places Visited", "'=Regular", "'=Regular"]
    for name in ("unlocks", "near_misses"):
        assert analyst.get(f"/admin/reports/?export={name}").status_code == 200
    unlocks = analyst.get("/admin/reports/?export=unlocks").content.decode()
    assert unlocks.splitlines()[0] == "period,unlocks,cumulative,revoked,lost,expired"


@pytest.mark.parametrize(
    "name",
    [
        "=1+2",
        "+1+2",
        "-1+2",
        "@SUM(A1:A9)",
        "\t=1+2",
        "\r=1+2",
        "\n=1+2",
        "\tplain",
        "\rplain",
        "\nplain",
        " =1+2",
        "  +1+2",
        " -1+2",
        " @SUM(A1:A9)",
        "\u00a0=1+2",
        " \t\r\n=cmd|' /C calc'!A0",
    ],
)
def test_a_cell_a_spreadsheet_would_run_as_a_formula_starts_with_a_quote(analyst, db, name):
    make_badge(key="b", name=name, requirements=[])
    response = analyst.get("/admin/reports/?export=rarity")
    [header, row] = list(csv.reader(io.StringIO(response.content.decode(), newline="")))
    assert row[header.index("badge")] == "'" + name
    assert row[header.index("percent")] == "0.0"  # numbers stay numbers


@pytest.mark.parametrize("name", ["-5", "+5", "1e3", "Regular -1", "a=b", "plain"])
def test_numbers_and_plain_text_are_exported_as_they_are(analyst, db, name):
    make_badge(key="b", name=name, requirements=[])
    response = analyst.get("/admin/reports/?export=rarity")
    [header, row] = list(csv.reader(io.StringIO(response.content.decode(), newline="")))
    assert row[header.index("badge")] == name


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("start=2026-13-01", "start: &#x27;2026-13-01&#x27; is not a date; use YYYY-MM-DD."),
        ("start=2026-11-10&end=2026-11-01", "start: The start must be on or before the end."),
        ("badge=ghost", "badge: No badge with key &#x27;ghost&#x27;."),
        ("unit=hour", "unit: Choose day or week."),
        ("quiet=0", "quiet: Quiet days must be a whole number from 1 to 366."),
        ("quiet=%C2%B2", "quiet: Quiet days must be a whole number from 1 to 366."),
        ("sort=size", "sort: Sort by one of"),
        ("export=pdf", "export: Export one of"),
        # What would fail deeper down: PostgreSQL refuses NUL characters, the
        # day arithmetic overflows near year 1 and 9999, and int() refuses
        # more than 4300 digits.
        ("badge=%00", "badge: must not contain NUL characters"),
        ("unit=day%00", "unit: must not contain NUL characters"),
        ("start=2026-01-01%00", "start: must not contain NUL characters"),
        ("badge=" + "x" * 65, "badge: must be at most 64 characters"),
        ("quiet=" + "9" * 5000, "quiet: must be at most 32 characters"),
        (
            "start=0001-01-01&end=9999-12-31",
            "end: must be a date between 2000-01-01 and 2999-12-31",
        ),
        (
            "start=0001-01-01&end=9999-12-31",
            "start: must be a date between 2000-01-01 and 2999-12-31",
        ),
        ("end=9999-12-31", "end: must be a date between 2000-01-01 and 2999-12-31"),
        ("end=0001-01-01", "end: must be a date between 2000-01-01 and 2999-12-31"),
        ("start=1999-12-31", "start: must be a date between 2000-01-01 and 2999-12-31"),
        ("export=rarity&end=3000-01-01", "end: must be a date between 2000-01-01 and 2999-12-31"),
    ],
)
def test_bad_filters_are_named_with_a_400(analyst, db, query, message):
    response = analyst.get(f"/admin/reports/?{query}")
    assert response.status_code == 400
    assert message in response.content.decode()


@pytest.mark.parametrize(
    "query",
    ["start=2000-01-01&end=2000-12-31&unit=week", "start=2999-01-01&end=2999-12-31&unit=week"],
)
def test_the_ends_of_the_date_range_are_served_and_exported(analyst, history, query):
    assert analyst.get(f"/admin/reports/?{query}").status_code == 200
    for name in EXPORTS:
        response = analyst.get(f"/admin/reports/?{query}&export={name}")
        assert response.status_code == 200
        assert response["Content-Type"] == "text/csv; charset=utf-8"


def test_weekly_buckets_start_on_monday(db):
    filters, errors = reports.parse_filters(
        {"start": "2026-11-04", "end": "2026-11-20", "unit": "week"}
    )
    assert not errors
    periods = [row["period"].isoformat() for row in reports.unlocks_over_time(filters)]
    assert periods == ["2026-11-02", "2026-11-09", "2026-11-16"]


def test_the_admin_front_page_links_to_reports_for_analysts_only(analyst, client, db):
    assert "Achievement reports" in analyst.get("/admin/").content.decode()
    analyst.force_login(make_user(username="plainstaff", is_staff=True))
    assert "Achievement reports" not in analyst.get("/admin/").content.decode()


def test_rule_health_flags_unawarded_badges_and_silent_event_types(analyst, history):
    make_badge(key="quiet", requirements=[{"event_type": "lesson.finished", "threshold": 1}])
    page = analyst.get("/admin/reports/")
    problems = {(row["badge"], row["problem"]) for row in page.context["rule_health"]}
    assert ("Quiet", "No one has earned it yet.") in problems
    assert ("Quiet", "It counts lesson.finished events, and none has arrived yet.") in problems
    assert not any(badge == "5 Places Visited" for badge, _ in problems)


def test_rule_health_sees_an_unlock_spike_against_a_base_worth_comparing(db, history):
    from achievements.models import Badge, Unlock

    badge, _ = history
    filters, _ = reports.parse_filters({})

    def problems() -> list[str]:
        return [
            row["problem"] for row in reports.rule_health(filters) if row["badge"] == badge.name
        ]

    Badge.objects.filter(pk=badge.pk).update(created_at=timezone.now() - timedelta(days=30))
    users = [make_user(username=f"new{n}") for n in range(30)]
    # 7 this week against none before: a new badge's first week, not a spike.
    Unlock.objects.bulk_create([Unlock(user=user, badge=badge) for user in users[:6]])
    assert problems() == []
    # Against a base of 10 the week before, 21 is more than double.
    ten_days_ago = timezone.now() - timedelta(days=10)
    Unlock.objects.bulk_create(
        [Unlock(user=user, badge=badge, unlocked_at=ten_days_ago) for user in users[6:16]]
    )
    Unlock.objects.bulk_create([Unlock(user=user, badge=badge) for user in users[16:30]])
    assert problems() == [
        "Its unlocks more than doubled: 21 in the last 7 days, 10 in the 7 days before."
    ]
    # A badge younger than the two weeks compared is not compared.
    Badge.objects.filter(pk=badge.pk).update(created_at=timezone.now() - timedelta(days=9))
    assert problems() == []


def test_live_latency_leaves_out_unlocks_found_later(db, history):
    from achievements.models import Unlock

    badge, _ = history
    filters, _ = reports.parse_filters({})
    [live] = Unlock.objects.filter(badge=badge)  # ana's, made by her fifth visit
    assert live.event is not None
    live.delivered_at = live.event.received_at + timedelta(milliseconds=50)
    live.save(update_fields=["delivered_at"])
    rows = {row["measure"]: row["value"] for row in reports.pipeline_health(filters)}
    assert rows["Unlocks not counted as live (re-evaluation, replay, composites)"] == "0 of 4"
    # A re-evaluation an hour later: its deciding event was received an hour before.
    late = make_user(username="late")
    old = record_event(late, "visit.created", payload={"place_id": 1}).event
    hour = timezone.now() + timedelta(hours=1)
    Unlock.objects.create(user=late, badge=badge, event=old, unlocked_at=hour, delivered_at=hour)
    rows = {row["measure"]: row["value"] for row in reports.pipeline_health(filters)}
    assert rows["Unlocks not counted as live (re-evaluation, replay, composites)"] == "1 of 5"
    assert rows["Unlock latency p95 (live unlocks)"] == "0.05 s"  # not the hour


@pytest.mark.parametrize(
    ("count", "minutes", "shown"),
    [
        (0, 60, "none"),
        (90_000, 60, "1,500 a minute"),
        (45, 10, "4.5 a minute"),
        (3, 60, "3 an hour"),
        (7, 7 * 1440, "1 a day"),
        (1, 30 * 1440, "under 1 a day"),
    ],
)
def test_rates_read_as_a_person_says_them(count, minutes, shown):
    assert reports._rate(count, minutes) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "—"), (0.0004, "under 1 ms"), (0.042, "0.042 s"), (3.456, "3.5 s"), (312, "5 min")],
)
def test_lags_read_as_a_person_says_them(seconds, shown):
    assert reports._seconds(seconds) == shown


def test_pipeline_health_reports_volume_lag_and_failures(analyst, history):
    page = analyst.get("/admin/reports/")
    rows = {row["measure"]: row["value"] for row in page.context["pipeline"]}
    assert rows["Events received in the range"] == "14"
    assert rows["Processing lag p50 (received → evaluated)"].endswith(" s")
    assert rows["Dead-lettered events now"] == "0"
    assert rows["Task messages queued now"] == "— (embedded mode)"
    response = analyst.get("/admin/reports/?export=pipeline")
    assert response.content.decode().splitlines()[0] == "measure,value"


def test_tier_funnel_and_time_to_unlock(analyst, history, django_capture_on_commit_callbacks):

    badge, tiered = history
    page = analyst.get("/admin/reports/")
    funnel = [(row["step"], row["users"], row["of_previous"]) for row in page.context["funnel"]]
    # ana posted 3 images (Silver), ben 1 (Bronze), cy none.
    assert funnel == [("Started", 2, ""), ("Bronze", 2, "100 %"), ("Silver", 1, "50 %")]

    # A user whose first visit was 3 days before the fifth place.
    late = make_user(username="dee")
    start = timezone.now() - timedelta(days=3)
    with django_capture_on_commit_callbacks(execute=True):
        record_event(late, "visit.created", payload={"place_id": 0}, occurred_at=start)
        for place in range(1, 5):
            record_event(late, "visit.created", payload={"place_id": place})
    rows = {row["badge"]: row for row in reports.time_to_unlock(reports.parse_filters({})[0])}
    assert rows[badge.name]["unlocks"] == 2  # ana (minutes) and dee (3 days)
    assert rows[badge.name]["p90"] == "3.0 days"
    assert analyst.get("/admin/reports/?export=funnel").status_code == 200


def test_the_quiet_days_filter_sets_when_an_event_type_counts_as_silent(analyst, history):
    make_badge(key="lessons", requirements=[{"event_type": "lesson.finished", "threshold": 9}])
    user = make_user(username="student")
    record_event(user, "lesson.finished", occurred_at=timezone.now() - timedelta(days=10))

    def problems(query: str) -> set[str]:
        page = analyst.get(f"/admin/reports/?{query}")
        assert page.status_code == 200
        return {row["problem"] for row in page.context["rule_health"] if row["badge"] == "Lessons"}

    ten_days_ago = date_format(timezone.localdate() - timedelta(days=10), "DATE_FORMAT")
    assert (
        f"It counts lesson.finished events, and none has arrived since {ten_days_ago}."
        in problems("")
    )
    assert problems("quiet=30") == {"No one has earned it yet."}
    assert 'name="quiet"' in analyst.get("/admin/reports/").content.decode()


def test_time_to_unlock_starts_at_the_first_event_that_passes_the_filters(
    db, django_capture_on_commit_callbacks
):
    badge = make_badge(key="big_spender", requirements=[])
    BadgeRequirement.objects.create(
        badge=badge,
        event_type="order.paid",
        threshold=2,
        filters={"all": [{"field": "total", "op": ">=", "value": 100}]},
    )
    user = make_user(username="shopper")
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        # A small order 9 days ago does not count; the first big one, 2 days ago, does.
        record_event(user, "order.paid", payload={"total": 5}, occurred_at=now - timedelta(9))
        record_event(user, "order.paid", payload={"total": 150}, occurred_at=now - timedelta(2))
        record_event(user, "order.paid", payload={"total": 120}, occurred_at=now)
    [row] = [r for r in reports.time_to_unlock(reports.parse_filters({})[0]) if r["unlocks"]]
    assert (row["badge"], row["median"]) == ("Big Spender", "2.0 days")


def test_replay_records_the_time_to_unlock_too(db, django_capture_on_commit_callbacks):
    from achievements.models import RequirementProgress, Unlock, UserBadge
    from achievements.replay import replay_events

    badge = make_places_badge(threshold=2)
    user = make_user(username="replayed")
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        record_event(
            user, "visit.created", payload={"place_id": 1}, occurred_at=now - timedelta(3)
        )
        record_event(user, "visit.created", payload={"place_id": 2}, occurred_at=now)
    # As if the unlock had never been evaluated: the replay must write it whole.
    Unlock.objects.all().delete()
    UserBadge.objects.all().delete()
    RequirementProgress.objects.update(started_at=None)
    replay_events()
    unlock = Unlock.objects.get(badge=badge)
    assert unlock.took == timedelta(days=3)
    assert RequirementProgress.objects.get().started_at == now - timedelta(3)


def test_a_composite_records_the_time_from_its_parts_first_event(
    db, django_capture_on_commit_callbacks
):
    from achievements.models import Unlock

    visitor = make_places_badge(threshold=1)
    poster = make_badge(
        key="poster", requirements=[{"event_type": "image.posted", "threshold": 1}]
    )
    both = make_badge(key="both", requirements=[])
    composite = BadgeRequirement.objects.create(
        badge=both, kind="composite", threshold=0, composite_mode="all"
    )
    composite.composite_badges.set([visitor, poster])
    user = make_user(username="allrounder")
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        record_event(
            user, "visit.created", payload={"place_id": 1}, occurred_at=now - timedelta(4)
        )
        record_event(user, "image.posted", payload={"image_id": 1}, occurred_at=now)
    assert Unlock.objects.get(badge=both).took == timedelta(days=4)


def test_near_misses_keep_the_closest_when_there_are_too_many(db, monkeypatch):
    from achievements.models import UserBadge

    badge = make_places_badge(threshold=5)
    other = make_badge(key="marathon", requirements=[])
    far, close = make_user(username="far"), make_user(username="close")
    # 40 of 50 is a bigger number but a smaller share than 9 of 10.
    UserBadge.objects.create(user=far, badge=other, current_value=40, target_value=50)
    UserBadge.objects.create(user=close, badge=badge, current_value=9, target_value=10)
    monkeypatch.setattr(reports, "NEAR_MISS_LIMIT", 1)
    [row] = reports.near_misses(reports.parse_filters({})[0])
    assert (row["user"], row["percent"]) == ("close", 90)


@pytest.mark.parametrize(
    ("peak", "ticks"),
    [
        (0, [0, 1]),
        (3, [0, 1, 2, 3]),
        (7, [0, 2, 4, 6, 8]),
        (20, [0, 5, 10, 15, 20]),
        (386, [0, 100, 200, 300, 400]),
        (1234, [0, 500, 1000, 1500]),
    ],
)
def test_chart_scales_have_round_marks_that_reach_the_top(peak, ticks):
    assert reports._nice_ticks(peak) == ticks


def test_the_chart_keeps_every_bar_and_the_running_total_inside_its_frame(db):
    from datetime import date

    rows: list[dict[str, Any]] = []
    for n in range(31):
        running = sum(7 * k for k in range(n + 1))
        rows.append(
            {
                "period": date(2026, 12, 1) + timedelta(days=n),
                "unlocks": 7 * n,
                "cumulative": running,
            }
        )
    svg = str(reports.chart(rows, unit="day"))

    tops = [float(y) for y in re.findall(r'<rect x="[\d.]+" y="([\d.]+)" width', svg)]
    assert len(tops) == 1 + 31 and min(tops) >= 10  # the legend's swatch and every bar
    found = re.search(r'<polyline points="([^"]+)"', svg)
    assert found is not None
    line = found.group(1)
    assert min(float(point.split(",")[1]) for point in line.split()) >= 34  # below the top
    assert svg.count('text-anchor="middle"') <= 8 and "Dec 31" in svg
