"""Evaluation throughput of real Celery worker processes, batched and one event per task.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1):

    .venv/bin/python bench/throughput.py [--events 20000] [--repeats 3]

It starts the production topology without a web server (a scratch
PostgreSQL database, Redis, `celery worker` processes), records waiting
events straight into the database (1,000 users, `visit.created` with a
place id each user has not visited yet, up to 40, so every event moves two
distinct-place counts, against the demo's badges), asks for one drain, and
times from the first claim (the worker's own `processed_at` stamp) to the
moment the last batch's commit is seen (polled every 20 ms): `processed_at`
is written when a batch is claimed, so the last stamp leaves out the last
batch's whole work.
Set-ups:

- one worker process vs two (`--concurrency 1` and `2`);
- 10 vs 1,000 more badges watching other event types;
- users with histories of 100 vs 100,000 earlier events (one user per
  history size, events spread over 1,000 users in the other set-ups);
- and, for scale, one event per task (`ACCOLADE_EVALUATION_BATCH_SIZE=1`),
  over at most 2,000 events.

Each figure is the median of --repeats runs, in events per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402

SINGLE_EVENTS = 2000
STAMPED = "last claim overstatement"

LOAD = """
import json
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
User = get_user_model()
spec = {spec}
names = [f"{{spec['who']}}-{{n}}" for n in range(spec["users"])]
User.objects.bulk_create(
    [User(username=name, password="!") for name in names], ignore_conflicts=True
)
users = list(User.objects.filter(username__in=names).order_by("pk").values_list("pk", flat=True))
now = timezone.now()
with connection.cursor() as cursor, cursor.copy(
    "COPY achievements_event (event_id, event_type, user_id, external_user_id, occurred_at,"
    " source, payload, received_at, processed_at, fingerprint, attempts, last_error)"
    " FROM STDIN"
) as copy:
    for n in range(spec["count"]):
        copy.write_row((
            f"{{spec['prefix']}}-{{n}}", "visit.created", users[n % len(users)], "", now,
            "bench", json.dumps({{"place_id": (n // len(users)) % 40}}), now,
            now if spec["processed"] else None, "", 0, "",
        ))
"""

BADGES = """
from achievements import index
from achievements.models import Badge, BadgeRequirement
have = Badge.objects.filter(key__startswith="unrelated_").count()
for n in range(have, {count}):
    badge = Badge.objects.create(key=f"unrelated_{{n}}", name=f"Unrelated {{n}}")
    BadgeRequirement.objects.create(badge=badge, event_type=f"other.type{{n % 50}}", threshold=5)
Badge.objects.filter(key__startswith="unrelated_").update(is_active=False)
Badge.objects.filter(key__in=[f"unrelated_{{n}}" for n in range({count})]).update(is_active=True)
index.invalidate()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the one-event-per-task run")
    parser.add_argument(
        "--batch", type=int, default=0, help="ACCOLADE_EVALUATION_BATCH_SIZE (default: settings)"
    )
    args = parser.parse_args()
    if args.events < 1000 or args.repeats < 1:
        parser.error("--events must be at least 1000 and --repeats at least 1")
    results = run(args.events, args.repeats, quick=args.quick, batch=args.batch)
    report(results, args)


class Bench:
    def __init__(self, topology, events: int) -> None:
        self.topology = topology
        self.events = events
        self.runs = 0
        # Per run: the span the last claim's stamp gives, as a share of the span to commit.
        self.stamped: list[float] = []

    def load(self, *, count: int, users: int, who: str = "bench", processed: bool = False) -> str:
        self.runs += 1
        prefix = f"run{self.runs}"
        spec = {
            "count": count,
            "users": users,
            "who": who,
            "prefix": prefix,
            "processed": processed,
        }
        self.topology.python(LOAD.format(spec=repr(spec)))
        return prefix

    def rate(self, *, users: int = 1000, who: str = "bench") -> float:
        """Record --events waiting events, ask for a drain, time them through."""
        prefix = self.load(count=self.events, users=users, who=who)
        started = time.monotonic()
        self.topology.python("from achievements.dispatch import request_drain; request_drain()")
        committed = self._wait(prefix)
        elapsed = self._span(prefix, committed)
        wall = time.monotonic() - started
        return self.events / elapsed if elapsed > 0 else self.events / wall

    def single_rate(self) -> float:
        """One task message per event (the design before batching), over at most
        2,000 events: at tens of events a second, 20,000 would take minutes."""
        count = min(self.events, SINGLE_EVENTS)
        prefix = self.load(count=count, users=1000)
        self.topology.python(
            "from achievements.models import Event\n"
            "from achievements.tasks import evaluate_event_task\n"
            f"for pk in Event.objects.filter(event_id__startswith={prefix + '-'!r})"
            ".order_by('pk').values_list('pk', flat=True):\n"
            "    evaluate_event_task.delay(pk)"
        )
        committed = self._wait(prefix)
        return count / max(self._span(prefix, committed), 1e-6)

    def _span(self, prefix: str, committed: datetime) -> float:
        """Seconds from the first of these events a worker took to the commit of the
        last; beside it, what the last claim's stamp would have said (`stamped`)."""
        first, last = self.topology.query(
            "SELECT min(processed_at), max(processed_at) FROM achievements_event "
            "WHERE event_id LIKE %s",
            (f"{prefix}-%",),
        )[0]
        if not (first and last):
            return 0.0
        self.stamped.append((last - first).total_seconds() / (committed - first).total_seconds())
        return (committed - first).total_seconds()

    def _wait(self, prefix: str, timeout: float = 600) -> datetime:
        """Until every event of the run is committed: when that was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            [(waiting,)] = self.topology.query(
                "SELECT EXISTS (SELECT 1 FROM achievements_event "
                "WHERE processed_at IS NULL AND event_id LIKE %s)",
                (f"{prefix}-%",),
            )
            if not waiting:
                return datetime.now(UTC)
            time.sleep(0.02)
        raise TimeoutError(f"events of {prefix} still waiting")

    def restart_workers(self, concurrency: int) -> None:
        for worker in self.topology.workers:
            self.topology.kill(worker)
            self.topology.processes.remove(worker)
        self.topology.workers.clear()
        self.topology.start_worker(concurrency=concurrency)


def run(events: int, repeats: int, *, quick: bool, batch: int = 0) -> dict[str, float]:
    from tests.integration.stack import Topology

    results: dict[str, list[float]] = {}

    def measure(name: str, fn) -> None:
        results.setdefault(name, []).append(fn())
        print(f"  {name:28} {results[name][-1]:8.0f} events/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        env = {"ACCOLADE_LOG_LEVEL": "WARNING"}
        if batch:
            env["ACCOLADE_EVALUATION_BATCH_SIZE"] = str(batch)
        topology = Topology(Path(tmp), extra_env=env)
        try:
            topology.start(workers=1, concurrency=1)
            bench = Bench(topology, events)
            bench.rate()  # warm-up: the workers' first batches, the database's caches
            for _ in range(repeats):
                bench.restart_workers(1)
                topology.python(BADGES.format(count=10))
                measure("1 process, 10 badges", bench.rate)
                topology.python(BADGES.format(count=1000))
                measure("1 process, 1,000 badges", bench.rate)
                topology.python(BADGES.format(count=10))
                bench.restart_workers(2)
                measure("2 processes", bench.rate)
            bench.restart_workers(1)
            for size in (100, 100_000):
                for repeat in range(repeats):
                    # A user of its own with exactly this many earlier, evaluated events.
                    who = f"history{size}-{repeat}"
                    bench.load(count=size, users=1, who=who, processed=True)
                    measure(
                        f"history of {size:,} events",
                        lambda who=who: bench.rate(users=1, who=who),
                    )
            if not quick:
                bench.restart_workers(1)
                measure("1 process, one event per task", bench.single_rate)
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()
    medians = {name: statistics.median(values) for name, values in results.items()}
    # How much the last claim's stamp would have flattered the figures.
    stamped = [run for run in bench.stamped[1:] if run > 0]  # not the warm-up
    medians[STAMPED] = statistics.median(1 / run - 1 for run in stamped) if stamped else 0.0
    return medians


def report(results: dict[str, float], args: argparse.Namespace) -> None:
    overstated = results.pop(STAMPED)
    one = results["1 process, 10 badges"]
    badge_ratio = results["1 process, 1,000 badges"] / one
    scale = results["2 processes"] / one
    history_ratio = results["history of 100,000 events"] / results["history of 100 events"]
    print(f"evaluation throughput, {args.events:,} events per run, median of {args.repeats}")
    for name, value in results.items():
        print(f"  {name:32} {value:8.0f} events/s")
    print(f"  1,000 vs 10 badges       ratio {badge_ratio:.2f}")
    print(f"  100,000 vs 100 history   ratio {history_ratio:.2f}")
    print(f"  2 vs 1 process           x{scale:.2f}")
    print(f"  timed to the last claim instead of the commit: {overstated:+.1%} (median of runs)")
    write_results(
        "throughput",
        {
            "events_per_run": args.events,
            "repeats": args.repeats,
            "events_per_second": {k: round(v, 1) for k, v in results.items()},
            "ratios": {
                "badges_1000_vs_10": round(badge_ratio, 3),
                "history_100000_vs_100": round(history_ratio, 3),
                "processes_2_vs_1": round(scale, 3),
            },
            "last_claim_overstatement": round(overstated, 4),
        },
    )


if __name__ == "__main__":
    run_script(main)
