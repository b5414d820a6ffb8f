"""Ingestion: events accepted durably through `POST /api/v1/events`, single and in batches.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1, and wrk:
`bash .ci/services.sh --bench` installs it):

    .venv/bin/python bench/ingestion.py [--connections 32] [--seconds 6] [--repeats 3]

It starts the production topology (a scratch PostgreSQL database, Redis, one
Daphne process; no worker, so nothing competes with ingestion) and drives it
with wrk, a load generator in C, so the client takes little of the CPU the
server needs. Every request carries new event ids (a Lua script numbers
them). Three runs of --seconds each:

- single: one event per request;
- batches: 100 events per request;
- floor: the same single-event request without an API key, answered 401
  by the view before any work. It is what Daphne and Django's middleware
  cost alone, so the ceiling for any request on this stack.

Events/s counts the rows stored (an answered 202 means they are committed).
Figures are medians of --repeats runs; p50 and p99 are wrk's latencies.
`--only single` (repeatable) runs only those kinds, and writes no results.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, settle, write_results  # noqa: E402

SETUP = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from achievements.models import Badge, BadgeRequirement, ExternalIdentity
from api.models import ApiKey
badge = Badge.objects.create(key="ingest", name="Ingest")
BadgeRequirement.objects.create(badge=badge, event_type="bench.ingest", threshold=10**9)
User = get_user_model()
User.objects.bulk_create([User(username=f"in-{n}", password="!") for n in range(100)])
for user in User.objects.filter(username__startswith="in-"):
    ExternalIdentity.objects.create(external_id=user.username, user=user, linked_at=timezone.now())
print(ApiKey.issue("ingestion-bench")[1])
"""

# wrk runs this in each of its threads: every request gets fresh event ids,
# spread over the 100 linked users.
SCRIPT = """
local run, size, key = "%(run)s", %(size)d, "%(key)s"
local counter, threads = 0, 0
thread_no = 0  -- a global: setup() sets each thread's own
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end
function request()
  local events = {}
  for i = 1, size do
    counter = counter + 1
    events[i] = string.format(
      '{"event_id":"%%s-%%d-%%d","user_id":"in-%%d","event_type":"bench.ingest",'
      .. '"occurred_at":"%(now)s","payload":{"n":%%d}}',
      run, thread_no, counter, counter %% 100, counter)
  end
  local body = events[1]
  if size > 1 then body = '{"events":[' .. table.concat(events, ",") .. ']}' end
  local headers = {["Content-Type"] = "application/json"}
  if key ~= "" then headers["Authorization"] = "Bearer " .. key end
  return wrk.format("POST", "/api/v1/events", headers, body)
end
"""


# Each kind of run: events per request, and whether it sends the API key.
KINDS = {"floor": (1, False), "single": (1, True), "batches_of_100": (100, True)}


def wrk(
    bases: list[str], key: str, run: str, size: int, connections: int, seconds: int, tmp: Path
) -> dict:
    """Drive every web process at once (the connections split between them);
    requests add up, latencies are the worst process's."""
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat()
    scripts = []
    for number in range(len(bases)):  # a script per wrk process: ids of its own
        script = tmp / f"{run}-{number}.lua"
        script.write_text(
            SCRIPT % {"run": f"{run}-{number}", "size": size, "key": key, "now": now}
        )
        scripts.append(script)
    share = max(2, connections // len(bases))
    processes = [
        subprocess.Popen(
            [
                "wrk",
                "-t2",
                f"-c{share}",
                f"-d{seconds}s",
                "--latency",
                "--timeout",
                "30s",
                "-s",
                str(script),
                base,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for base, script in zip(bases, scripts, strict=True)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"wrk failed:\n{out}")
        results.append(parse_wrk(out))
    requests = sum(r["requests"] for r in results)
    elapsed = max(r["seconds"] for r in results)
    return {
        "requests": requests,
        "seconds": elapsed,
        "requests_per_s": sum(r["requests_per_s"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
    }


def parse_wrk(out: str) -> dict:
    """Requests, seconds, requests/s, non-2xx answers and p50/p99 from `wrk --latency`."""
    requests, elapsed = re.search(r"(\d+) requests in ([\d.]+)s", out).groups()  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(requests),
        "seconds": float(elapsed),
        "requests_per_s": int(requests) / float(elapsed),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "p50_ms": _latency(out, "50%"),
        "p99_ms": _latency(out, "99%"),
    }


def _latency(out: str, label: str) -> float:
    value, unit = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


HANDLERS = ("django", "one-hop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--web-processes", type=int, default=1, help="Daphne processes, each on its own port"
    )
    parser.add_argument(
        "--only",
        choices=KINDS,
        action="append",
        help="run only these kinds (repeatable); results are then printed, not written",
    )
    parser.add_argument(
        "--handlers",
        action="store_true",
        help="measure each WEB_HTTP_HANDLER (django, one-hop) in turn in every repeat, "
        "each on Daphne processes of its own; results go to results-ingestion-handlers.json",
    )
    args = parser.parse_args()
    kinds = [kind for kind in KINDS if kind in (args.only or KINDS)]
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run `bash .ci/services.sh --bench` (or make bench)")
    from tests.integration.stack import Topology

    # One set of web processes per handler measured; "" is whichever the
    # environment chooses (Django's own handler unless WEB_HTTP_HANDLER says).
    handlers = list(HANDLERS) if args.handlers else [""]
    runs: dict[str, dict[str, list[dict]]] = {
        handler: {"single": [], "batches_of_100": [], "floor": []} for handler in handlers
    }
    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(Path(tmp), extra_env={"ACCOLADE_LOG_LEVEL": "WARNING"})
        try:
            topology.start(workers=0)
            webs: dict[str, list[str]] = {}
            if args.handlers:
                # The topology's first web process stays idle.
                for handler in handlers:
                    webs[handler] = [
                        topology.start_web(WEB_HTTP_HANDLER=handler)
                        for _ in range(args.web_processes)
                    ]
            else:
                webs[""] = [topology.base_url]
                webs[""] += [topology.start_web() for _ in range(args.web_processes - 1)]
            key = topology.python(SETUP).strip().splitlines()[-1]
            count = "SELECT count(*) FROM achievements_event"
            for repeat in range(args.repeats):
                for name in kinds:
                    for handler in handlers:
                        size, with_key = KINDS[name]
                        settle(topology, count)  # requests wrk left in flight finish first
                        [(before,)] = topology.query(count)
                        result = wrk(
                            webs[handler],
                            key if with_key else "",
                            f"{name}{handler}{repeat}",
                            size,
                            args.connections,
                            args.seconds,
                            Path(tmp),
                        )
                        [(after,)] = topology.query(count)
                        result["events_per_s"] = (after - before) / result["seconds"]
                        runs[handler][name].append(result)
                        print(
                            f"  run {repeat + 1} {handler or 'default':8} {name:15} "
                            f"{result['requests_per_s']:7.0f} req/s "
                            f"{result['events_per_s']:8.0f} events/s  "
                            f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms  "
                            f"non-2xx {result['non_2xx']}"
                        )
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()

    summaries = {
        handler: {
            name: {
                field: round(statistics.median(r[field] for r in results), 1)
                for field in ("requests_per_s", "events_per_s", "p50_ms", "p99_ms")
            }
            for name, results in by_kind.items()
            if results
        }
        for handler, by_kind in runs.items()
    }
    failures = sum(
        r["non_2xx"]
        for by_kind in runs.values()
        for name in ("single", "batches_of_100")
        for r in by_kind[name]
    )
    for handler, summary in summaries.items():
        print(
            f"\ningestion through POST /api/v1/events, {args.web_processes} Daphne "
            f"process(es), {args.connections} connections"
            + (f", WEB_HTTP_HANDLER={handler}" if handler else "")
        )
        print(f"  {'':16} {'requests/s':>11} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for name, label in (
            ("single", "single events"),
            ("batches_of_100", "batches of 100"),
            ("floor", "floor (401)"),
        ):
            if name not in summary:
                continue
            row = summary[name]
            events = "" if name == "floor" else f"{row['events_per_s']:10.0f}"
            print(
                f"  {label:16} {row['requests_per_s']:11.0f} {events:>10} "
                f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f}"
            )
    if args.handlers:
        print("\n  one-hop against django, medians of the same run:")
        for name in kinds:
            django_, one_hop = summaries["django"][name], summaries["one-hop"][name]
            ratio = one_hop["requests_per_s"] / django_["requests_per_s"]
            print(
                f"  {name:16} requests/s x{ratio:.2f}"
                f"  p50 {django_['p50_ms']:.1f} -> {one_hop['p50_ms']:.1f} ms"
            )
    print(f"  refused or failed requests (not 202): {failures}")
    if args.only:
        return  # a partial run: the results files keep the full runs
    common = {
        "connections": args.connections,
        "web_processes": args.web_processes,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "failed_requests": failures,
    }
    if args.handlers:
        write_results(
            "ingestion-handlers",
            {**common, "handlers": summaries, "runs": runs},
        )
        return
    suffix = "" if args.web_processes == 1 else f"-{args.web_processes}-processes"
    write_results(f"ingestion{suffix}", {**common, **summaries[""], "runs": runs[""]})


if __name__ == "__main__":
    run_script(main)
