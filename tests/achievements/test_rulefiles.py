from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from achievements.models import Badge, BadgeRequirement
from tests.factories import make_badge, make_places_badge


@pytest.fixture
def every_kind(db):
    make_places_badge(threshold=5)
    runs = make_badge(key="long_runs", icon="🏃", requirements=[])
    BadgeRequirement.objects.create(
        badge=runs,
        event_type="run.finished",
        aggregation="sum",
        field="km",
        threshold=42,
        scope="rolling",
        window_days=30,
        filters={"all": [{"field": "source", "op": "==", "value": "watch"}]},
    )
    streak = make_badge(key="week_streak", requirements=[])
    BadgeRequirement.objects.create(
        badge=streak, kind="streak", event_type="lesson.done", threshold=4, streak_unit="week"
    )
    onboarding = make_badge(key="onboarded", requirements=[])
    onboarding.hidden = True
    onboarding.segment_group = Group.objects.create(name="beta")
    onboarding.save()
    BadgeRequirement.objects.create(
        badge=onboarding,
        kind="sequence",
        threshold=2,
        window_days=7,
        steps=["profile.completed", "project.created"],
    )
    # Tiered (places_visited_5 graded further) and repeatable badges.
    Badge.objects.filter(key="places_visited_5").update(
        tiers=[
            {"name": "Bronze", "threshold": 5},
            {"name": "Silver", "threshold": 25},
            {"name": "Gold", "threshold": 100},
        ]
    )
    Badge.objects.filter(key="long_runs").update(repeat="")
    weekly = make_badge(key="week_runner", requirements=[])
    weekly.repeat = "week"
    weekly.save()
    BadgeRequirement.objects.create(
        badge=weekly, event_type="run.finished", threshold=3, scope="week"
    )
    champion = make_badge(key="zz_champion", requirements=[])
    BadgeRequirement.objects.create(
        badge=champion, kind="composite", threshold=0, composite_mode="all"
    ).composite_badges.set([runs, streak])


def test_export_then_import_round_trips_every_badge(every_kind, tmp_path):
    first = tmp_path / "badges.json"
    call_command("export_badges", str(first))
    exported = json.loads(first.read_text())
    assert exported["format"] == "accolade-badges" and len(exported["badges"]) == 6
    assert exported["badges"][2]["tiers"][1] == {"name": "Silver", "threshold": 25}
    assert exported["badges"][3]["repeat"] == "week"

    assert exported["badges"][5]["requirements"][0]["composite_badges"] == [
        "long_runs",
        "week_streak",
    ]
    Badge.objects.all().delete()
    call_command("import_badges", str(first))
    second = tmp_path / "again.json"
    call_command("export_badges", str(second))
    assert json.loads(second.read_text()) == exported


def test_reimporting_unchanged_rules_keeps_requirements(every_kind, tmp_path):
    path = tmp_path / "badges.json"
    call_command("export_badges", str(path))
    before = sorted(BadgeRequirement.objects.values_list("pk", flat=True))
    call_command("import_badges", str(path))
    assert sorted(BadgeRequirement.objects.values_list("pk", flat=True)) == before


# Exports are sorted by key: long_runs, onboarded, places_visited_5, week_runner,
# week_streak, zz_champion.
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["badges"][0]["requirements"][0].update(aggregation="median"),
            "badges[0] ('long_runs').requirements[0].aggregation: Value 'median' is not a valid",
        ),
        (
            lambda d: d["badges"][1]["requirements"][0].update(steps=["a.b"]),
            "badges[1] ('onboarded').requirements[0].steps: A sequence needs at least 2 steps",
        ),
        (
            lambda d: d["badges"][1].update(segment={"group": "nobody"}),
            "badges[1] ('onboarded').segment.group: no group named 'nobody'",
        ),
        (
            lambda d: d["badges"][2]["requirements"][0].update(threshold=-3),
            "threshold: Ensure this value is greater than or equal to 0.",
        ),
        (
            lambda d: d["badges"][2]["requirements"][0].update(filters={"some": []}),
            "filters: Filter: a filter is",
        ),
        (lambda d: d["badges"][2].update(colour="red"), "colour: is not a badge field"),
        (lambda d: d.update(version=9), "version: must be 1"),
        (
            lambda d: d["badges"][5]["requirements"][0].update(composite_badges=["ghost"]),
            "badges[5] ('zz_champion').requirements[0].composite_badges: no badge with key "
            "'ghost'",
        ),
        (
            lambda d: d["badges"][2]["tiers"][1].update(threshold=3),
            "badges[2] ('places_visited_5').tiers: Tiers: tier 2 (Silver)'s threshold must be "
            "higher than the tier before it.",
        ),
        (
            lambda d: d["badges"][2]["requirements"][0].update(threshold=4),
            "badges[2] ('places_visited_5').tiers: The badge unlocks at its first tier "
            "(Bronze, 5), so the requirement's threshold must be 5, not 4.",
        ),
        (
            # Refused for the requirement itself, before its tiers are looked at.
            lambda d: d["badges"][2]["requirements"][0].update(operator="<="),
            "requirements[0].operator: A distinct requirement is compared with >= or >, not <=.",
        ),
        (
            lambda d: d["badges"][2]["requirements"].append({"event_type": "x.y", "threshold": 1}),
            "tiers: A badge with tiers has exactly one requirement",
        ),
        (
            lambda d: d["badges"][3]["requirements"][0].update(scope="month"),
            "badges[3] ('week_runner').repeat: Requirement 1: a badge earned every week counts "
            'each requirement per week, so set its scope to "Within one calendar week',
        ),
        (
            lambda d: d["badges"][3].update(repeat="year"),
            "badges[3] ('week_runner').repeat: Value 'year' is not a valid choice.",
        ),
        (
            lambda d: d["badges"][3].update(tiers=[{"name": "A", "threshold": 1}] * 2),
            "tiers: Tiers: the name 'A' is used twice.",
        ),
    ],
)
def test_an_invalid_entry_is_named_and_nothing_is_written(every_kind, tmp_path, change, message):
    path = tmp_path / "badges.json"
    call_command("export_badges", str(path))
    document = json.loads(path.read_text())
    document["badges"].append(
        {
            "key": "brand_new",
            "name": "New",
            "requirements": [{"event_type": "x.y", "threshold": 1}],
        }
    )
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(CommandError) as raised:
        call_command("import_badges", str(path))
    assert message in str(raised.value)
    assert "nothing imported" in str(raised.value)
    assert not Badge.objects.filter(key="brand_new").exists()


def test_unreadable_files_are_refused(db, tmp_path):
    with pytest.raises(CommandError, match="FILE: cannot read"):
        call_command("import_badges", str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(CommandError, match="FILE: not valid JSON"):
        call_command("import_badges", str(bad))


def test_the_documented_example_of_each_kind_imports(db):
    """docs/rules.md stays true: its example file is valid and round-trips."""
    from pathlib import Path

    from achievements.rulefiles import export_badges, import_badges

    text = (Path(__file__).parents[2] / "docs" / "rules.md").read_text()
    example = text.split("## One example of each kind", 1)[1]
    document = json.loads(example.split("```json", 1)[1].split("```", 1)[0])
    Group.objects.create(name="pro")
    assert import_badges(document) == (len(document["badges"]), 0)
    exported = {badge["key"]: badge for badge in export_badges()["badges"]}
    assert exported["explorer"]["tiers"][2] == {"name": "Gold", "threshold": 100}
    assert exported["weekly_workouts"]["repeat"] == "week"
    assert exported["all_rounder"]["requirements"][0]["composite_badges"] == [
        "marathon_month",
        "ten_k",
    ]


def test_import_names_a_filter_on_a_field_of_the_wrong_type(db):
    from achievements.models import EventType
    from achievements.rulefiles import RuleFileError, import_badges

    EventType.objects.create(name="run.finished", fields={"km": "number"})
    document = {
        "format": "accolade-badges",
        "version": 1,
        "badges": [
            {
                "key": "far",
                "name": "Far",
                "requirements": [
                    {
                        "event_type": "run.finished",
                        "threshold": "1",
                        "filters": {"all": [{"field": "km", "op": ">", "value": "10"}]},
                    }
                ],
            }
        ],
    }
    with pytest.raises(RuleFileError) as raised:
        import_badges(document)
    assert raised.value.problems == [
        "badges[0] ('far').requirements[0].filters: Filter: km is a number in run.finished "
        "events (declared under Event types), so compare it with a number, not the string "
        '"10".'
    ]
    assert not Badge.objects.exists()


def test_a_file_nested_too_deeply_is_refused_before_it_is_parsed(db, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"badges": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CommandError, match=r"FILE: is nested too deeply \(more than 32 levels\)"):
        call_command("import_badges", str(deep))


@pytest.mark.parametrize(
    ("requirement", "problem"),
    [
        ({"label": "a\x00b"}, "badges[0].requirements[0].label: must not contain NUL characters"),
        (
            {"event_type": "visit.created\x00"},
            "badges[0].requirements[0].event_type: must not contain NUL characters",
        ),
        (
            {"filters": {"all": [{"field": "x", "op": "==", "value": "\ud800"}]}},
            "badges[0].requirements[0].filters.all[0].value: must not contain unpaired "
            "surrogates (\\ud800-\\udfff)",
        ),
        (
            {"filters": {"all": [{"field": "x", "op": ">", "value": float("inf")}]}},
            "badges[0].requirements[0].filters.all[0].value: must be a finite number",
        ),
        (
            {"filters": json.loads('{"all": ' * 40 + "[]" + "}" * 40)},
            # The file, its badges, the badge, its requirements, the requirement and
            # its filters are six levels; the 33rd is where it goes too deep.
            "badges[0].requirements[0].filters"
            + ".all" * 27
            + ": is nested too deeply (more than 32 levels)",
        ),
    ],
)
def test_a_document_the_database_could_not_store_is_refused_naming_the_place(
    db, requirement, problem
):
    from achievements.rulefiles import RuleFileError, import_badges

    document = {
        "format": "accolade-badges",
        "version": 1,
        "badges": [
            {
                "key": "k",
                "name": "K",
                "requirements": [{"event_type": "visit.created", "threshold": 1, **requirement}],
            }
        ],
    }
    with pytest.raises(RuleFileError) as raised:
        import_badges(document)
    assert raised.value.problems == [problem]
    assert not Badge.objects.exists()
