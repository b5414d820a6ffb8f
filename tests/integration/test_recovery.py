"""Recovery in seconds on the real topology: a crashed worker's backlog, poison events
in batches, events that kill their worker, and a re-drive after the fix.

No celery beat runs in these tests unless one says so: recovery must not wait
for the sweeper.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.stack import Topology

pytestmark = pytest.mark.topology

UNPROCESSED = "SELECT count(*) FROM achievements_event WHERE processed_at IS NULL"
PROCESSED = "SELECT count(*) FROM achievements_event WHERE processed_at IS NOT NULL"

# Waiting events recorded straight into the table (as a backlog looks after an
# outage), then one drain asked for, as the last commit would.
BACKLOG = """
import json
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from achievements.models import Badge, BadgeRequirement
badge, _ = Badge.objects.get_or_create(key="visits_count", defaults={{"name": "Visit counter"}})
if not badge.requirements.exists():
    BadgeRequirement.objects.create(badge=badge, event_type="visit.created", threshold=10**6)
User = get_user_model()
names = [f"backlog-{{n}}" for n in range({users})]
User.objects.bulk_create([User(username=n, password="!") for n in names], ignore_conflicts=True)
users = list(User.objects.filter(username__in=names).order_by("pk").values_list("pk", flat=True))
now = timezone.now()
with connection.cursor() as cursor, cursor.copy(
    "COPY achievements_event (event_id, event_type, user_id, external_user_id, occurred_at,"
    " source, payload, received_at, fingerprint, attempts, last_error) FROM STDIN"
) as copy:
    for n in range({count}):
        payload = {payload}
        if n in {specials!r}:
            payload = {special}
        copy.write_row((f"{prefix}-{{n}}", "visit.created", users[n % len(users)], "", now,
                        "test", json.dumps(payload), now, "", 0, ""))
{after}
"""


def backlog(
    topology: Topology,
    *,
    count: int,
    users: int,
    prefix: str,
    specials: tuple[int, ...] = (),
    special: str = "payload",
    drain: bool = True,
) -> None:
    after = "from achievements.dispatch import request_drain; request_drain()" if drain else ""
    topology.python(
        BACKLOG.format(
            count=count,
            users=users,
            prefix=prefix,
            payload='{"place_id": n % 40}',
            specials=specials,
            special=special,
            after=after,
        )
    )


def visits(topology: Topology) -> int:
    return topology.query(
        "SELECT coalesce(sum(p.value), 0) FROM achievements_requirementprogress p "
        "JOIN achievements_badgerequirement r ON r.id = p.requirement_id "
        "JOIN achievements_badge b ON b.id = r.badge_id WHERE b.key = 'visits_count'"
    )[0][0]


def wait_for(topology: Topology, sql: str, check, timeout: float) -> float:
    """Seconds until `check(value)` holds for the query's value; fails after `timeout`."""
    started = time.monotonic()
    value = None
    while time.monotonic() - started < timeout:
        value = topology.query(sql)[0][0]
        if check(value):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{sql!r} at {value!r} after {timeout}s\n{topology.logs()}")


def test_a_restarted_worker_drains_a_crashed_workers_backlog_without_new_events(tmp_path):
    topology = Topology(tmp_path)
    try:
        topology.start(workers=1, concurrency=2)
        backlog(topology, count=20_000, users=200, prefix="crash")
        wait_for(topology, PROCESSED, lambda done: done >= 3000, timeout=120)
        topology.kill(topology.workers[0])  # the group: with its prefetched, unacked drains
        topology.workers.clear()
        waiting = topology.query(UNPROCESSED)[0][0]
        assert waiting > 5000
        topology.start_worker(concurrency=2)
        # Nothing else happens: no event, no beat. The new worker takes the backlog.
        took = wait_for(topology, UNPROCESSED, lambda left: left == 0, timeout=60)
        print(f"{waiting} waiting events drained {took:.1f}s after the worker came up")
        assert took < 30
        assert visits(topology) == 20_000  # nothing lost, nothing doubled
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()


def test_a_poison_event_in_a_batch_is_retried_then_dead_lettered_while_the_rest_commit(
    tmp_path,
):
    topology = Topology(
        tmp_path,
        extra_env={
            "ACCOLADE_MAX_ATTEMPTS": "3",
            "ACCOLADE_RETRY_BASE_SECONDS": "1",
            "ACCOLADE_RETRY_MAX_SECONDS": "2",
        },
    )
    try:
        topology.start(workers=1, concurrency=2)
        # A row no evaluation can take (a payload that is not an object, as an old
        # producer wrote it before payloads were checked), among good ones.
        backlog(topology, count=500, users=20, prefix="mixed", specials=(250,), special="[1]")
        took = wait_for(
            topology,
            "SELECT count(*) FROM achievements_event WHERE dead_lettered_at IS NOT NULL",
            lambda dead: dead == 1,
            timeout=60,
        )
        print(f"poison event dead-lettered {took:.1f}s after the drain was asked for")
        assert took < 20
        [(event_id, attempts, error, retry_at)] = topology.query(
            "SELECT event_id, attempts, last_error, retry_at FROM achievements_event "
            "WHERE dead_lettered_at IS NOT NULL"
        )
        assert (event_id, attempts, retry_at) == ("mixed-250", 3, None)
        assert "AttributeError" in error
        assert topology.query(UNPROCESSED)[0][0] == 1
        assert visits(topology) == 499
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()


def test_an_event_that_kills_its_worker_is_dead_lettered_and_a_re_drive_after_the_fix_works(
    tmp_path,
):
    crash_file = tmp_path / "the-bug"
    crash_file.write_text("present")
    topology = Topology(
        tmp_path,
        extra_env={"ACCOLADE_MAX_ATTEMPTS": "2", "PROBE_CRASH_FILE": str(crash_file)},
    )
    try:
        topology.start(workers=0)
        topology.start_worker(concurrency=2, include="tests.integration.probe_tasks")
        backlog(
            topology,
            count=300,
            users=20,
            prefix="oom",
            specials=(150,),
            special='{"place_id": 1, "crash": True}',
        )
        dead = "SELECT count(*) FROM achievements_event WHERE dead_lettered_at IS NOT NULL"
        took = wait_for(topology, dead, lambda count: count == 1, timeout=120)
        print(f"the event that kills workers was dead-lettered after {took:.1f}s")
        [(event_id, error)] = topology.query(
            "SELECT event_id, last_error FROM achievements_event "
            "WHERE dead_lettered_at IS NOT NULL"
        )
        assert event_id == "oom-150" and "worker process died" in error
        topology.wait_until(UNPROCESSED, 1, timeout=30)  # everything else went through
        assert visits(topology) == 299

        crash_file.unlink()  # the fix is deployed
        topology.python(
            "from achievements.dispatch import redrive_events\n"
            "from achievements.models import Event\n"
            "dead = Event.objects.dead_lettered().values_list('pk', flat=True)\n"
            "print(redrive_events(list(dead)))"
        )
        topology.wait_until(UNPROCESSED, 0, timeout=30)
        assert topology.query(dead)[0][0] == 0
        assert visits(topology) == 300
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()
