from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from achievements.management.commands import seed_demo
from achievements.models import Badge, BadgeRequirement, Event, RequirementProgress, UserBadge
from examples.places.models import Place


def test_seed_demo_creates_the_demo_badges_places_and_users(db, capsys):
    call_command("seed_demo")
    places, images = (
        Badge.objects.get(key="places_visited_5"),
        Badge.objects.get(key="images_posted_10"),
    )
    assert places.name == "5 Places Visited"
    [requirement] = places.requirements.all()
    assert (
        requirement.event_type,
        requirement.aggregation,
        requirement.field,
        requirement.threshold,
    ) == ("visit.created", "distinct", "place_id", 5)
    [requirement] = images.requirements.all()
    assert (requirement.event_type, requirement.aggregation, requirement.threshold) == (
        "image.posted",
        "count",
        10,
    )
    assert Place.objects.count() >= 5
    assert "alice" in capsys.readouterr().out


def test_seed_demo_run_twice_keeps_progress_on_unchanged_rules(
    db, django_capture_on_commit_callbacks
):
    call_command("seed_demo", quiet_logins=True)
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "record_event", user="alice", event_type="visit.created", payload='{"place_id": 1}'
        )
    requirement_ids = sorted(BadgeRequirement.objects.values_list("pk", flat=True))
    call_command("seed_demo", quiet_logins=True)
    assert Badge.objects.count() == len(seed_demo.DEMO_BADGES)
    assert sorted(BadgeRequirement.objects.values_list("pk", flat=True)) == requirement_ids
    assert (
        RequirementProgress.objects.get(
            user__username="alice", requirement__badge__key="places_visited_5"
        ).value
        == 1
    )


def test_record_event_records_and_evaluates_like_the_app(
    owner, capsys, django_capture_on_commit_callbacks
):
    from tests.factories import make_images_badge

    make_images_badge(threshold=1)
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "record_event",
            user="owner",
            event_type="image.posted",
            payload='{"image_id": 3}',
            event_id="cli-1",
        )
    event = Event.objects.get(event_id="cli-1")
    assert event.payload == {"image_id": 3} and event.source == "cli"
    assert UserBadge.objects.get(user=owner).completed_at is not None
    assert "Recorded image.posted cli-1 for owner" in capsys.readouterr().out


def test_record_event_reports_a_duplicate(owner, capsys):
    call_command("record_event", user="owner", event_type="image.posted", event_id="cli-1")
    call_command("record_event", user="owner", event_type="image.posted", event_id="cli-1")
    assert "Duplicate" in capsys.readouterr().out
    assert Event.objects.count() == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"event_type": ""}, "--type: must not be empty."),
        ({"event_type": "visit created"}, "--type: must be lower-case words"),
        ({"event_type": "v" * 80}, "--type: must be at most 64 characters"),
        ({"payload": "{not json"}, "--payload is not valid JSON"),
        ({"payload": "[1, 2]"}, "--payload must be a JSON object, not list."),
        ({"payload": "3"}, "--payload must be a JSON object, not int."),
        ({"user": "nobody"}, "--user: no user named 'nobody'."),
        ({"event_id": "has space"}, "--event-id: must be 1-128 characters"),
        ({"occurred_at": "yesterday"}, "--occurred-at is not an ISO 8601"),
        ({"occurred_at": "2026-01-01T10:00:00"}, "--occurred-at: must be time-zone aware."),
        ({"occurred_at": "2026-02-30T00:00:00+00:00"}, "--occurred-at is not a valid date"),
        ({"payload": "[" * 100_000}, "--payload is nested too deeply (more than 32 levels)."),
        ({"payload": '{"a": ' * 20 + "1" + "}" * 20}, "--payload: must be nested at most 10"),
    ],
)
def test_record_event_refuses_bad_input_with_one_clear_line_and_writes_nothing(
    owner, options, message
):
    arguments = {"user": "owner", "event_type": "visit.created", **options}
    with pytest.raises(CommandError) as raised:
        call_command("record_event", **arguments)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    assert not Event.objects.exists()


def test_record_event_exits_non_zero_with_one_line_from_the_shell(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEBUG": "1", "DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite3"}
    env.pop("REDIS_URL", None)

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert manage("migrate", "--noinput", "-v0").returncode == 0
    result = manage("record_event", "--user", "nobody", "--type", "visit.created")
    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: --user: no user named 'nobody'."
