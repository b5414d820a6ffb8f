"""Request cost, side by side: the producer's request with evaluation offloaded, and naive.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1, and wrk:
`bash .ci/services.sh --bench` installs it):

    .venv/bin/python bench/request_cost.py [--badges 25,250] [--seconds 5] [--repeats 3]

The request is the example producer's "log a visit" (`POST /places/` from
htmx, as the page sends it): save the visit, record the event in the same
transaction, render the panel. Every badge watches `visit.created`, with a
mix of rule kinds (counts, distinct places, sums with a filter, weekly
scopes, tiers), so each request's event concerns every badge.

- offloaded: the production set-up. The request commits and answers; a
  Celery worker process evaluates (on the same two cores, so its work still
  competes with the requests).
- naive: the same code with ACCOLADE_TASK_MODE=sync: the request evaluates
  every badge for the event, writes progress and unlocks and pushes the
  cards before it answers.

For each, wrk drives signed-in users (a session cookie and CSRF token per
user, rotated per request): one connection for the request's own latency,
then 16 for throughput (for three times as long, since wrk counts only
the requests answered within its run). Figures are medians of --repeats
runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, settle, write_results  # noqa: E402
from bench.ingestion import parse_wrk  # noqa: E402

USERS = 20

SETUP = """
import json
from django.contrib.auth import get_user_model
from achievements.rulefiles import document, import_badges
User = get_user_model()
for n in range({users}):
    User.objects.create_user(f"cost-{{n}}", password="{password}")
badges = json.loads('''{badges}''')
print(import_badges(document(badges)))
"""


def badge_definitions(count: int) -> list[dict]:
    """`count` badges, all watching visit.created, cycling through five rule kinds."""
    kinds: list[dict[str, object]] = [
        {"threshold": "100000"},
        {"threshold": "500", "aggregation": "distinct", "field": "place_id"},
        {
            "threshold": "1000000",
            "aggregation": "sum",
            "field": "place_id",
            "filters": {"all": [{"field": "place_id", "op": ">", "value": 0}]},
        },
        {"threshold": "50", "scope": "week"},
    ]
    badges = []
    for n in range(count):
        key = f"cost_{n}"
        if n % 5 == 4:
            badges.append(
                {
                    "key": key,
                    "name": f"Cost {n}",
                    "requirements": [{"event_type": "visit.created", "threshold": "1000"}],
                    "tiers": [
                        {"name": "Bronze", "threshold": 1000},
                        {"name": "Silver", "threshold": 5000},
                    ],
                }
            )
        else:
            badges.append(
                {
                    "key": key,
                    "name": f"Cost {n}",
                    "requirements": [{"event_type": "visit.created", **kinds[n % 4]}],
                }
            )
    return badges


LUA = """
local users = %(users)s
local places = %(places)s
local counter = 0
function request()
  counter = counter + 1
  local user = users[(counter %% #users) + 1]
  local place = places[(counter %% #places) + 1]
  return wrk.format("POST", "/places/", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = user[1],
    ["X-CSRFToken"] = user[2],
    ["HX-Request"] = "true",
  }, "place=" .. place)
end
"""


def lua_list(values: list) -> str:
    def one(value: object) -> str:
        if isinstance(value, list | tuple):
            return "{" + ", ".join(one(v) for v in value) + "}"
        return json.dumps(value)

    return "{" + ", ".join(one(v) for v in values) + "}"


def measure(badges: int, mode: str, seconds: int, tmp: Path) -> dict:
    from tests.integration.stack import DEMO_PASSWORD, SignedInClient, Topology

    env = {"ACCOLADE_LOG_LEVEL": "WARNING"}
    if mode == "naive":
        env["ACCOLADE_TASK_MODE"] = "sync"
    topology = Topology(tmp, extra_env=env)
    try:
        topology.start(workers=1 if mode == "offloaded" else 0, concurrency=1)
        imported = topology.python(
            SETUP.format(
                users=USERS,
                password=DEMO_PASSWORD,
                badges=json.dumps(badge_definitions(badges)),
            )
        )
        assert imported.strip().endswith(f"({badges}, 0)"), imported
        clients = [SignedInClient(topology.base_url, f"cost-{n}") for n in range(USERS)]
        places = clients[0].place_ids()
        script = tmp / f"{mode}-{badges}.lua"
        script.write_text(
            LUA
            % {
                "users": lua_list(
                    [[c.cookie_header, c.http.cookies["csrftoken"]] for c in clients]
                ),
                "places": lua_list(places),
            }
        )
        result: dict = {}
        for label, connections, duration in (
            ("one_connection", 1, seconds),
            # Three times as long: wrk counts only requests answered within
            # its run, and a naive request under load takes seconds.
            ("sixteen_connections", 16, 3 * seconds),
        ):
            out = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    f"-c{connections}",
                    f"-d{duration}s",
                    "--latency",
                    "--timeout",
                    "60s",
                    "-s",
                    str(script),
                    topology.base_url,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            result[label] = parse_wrk(out)
            # Requests wrk left in flight finish before the next run starts.
            settle(topology, "SELECT count(*), max(visited_at) FROM places_visit")
        [(visits,)] = topology.query("SELECT count(*) FROM places_visit")
        [(events,)] = topology.query("SELECT count(*) FROM achievements_event")
        [(rows,)] = topology.query("SELECT count(*) FROM achievements_requirementprogress")
        result["visits_saved"] = visits
        result["events_recorded"] = events
        result["progress_rows"] = rows
        return result
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--badges", default="25,250")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run `bash .ci/services.sh --bench` (or make bench)")
    counts = [int(n) for n in args.badges.split(",")]
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for badges in counts:
            for mode in ("offloaded", "naive"):
                with tempfile.TemporaryDirectory() as tmp:
                    result = measure(badges, mode, args.seconds, Path(tmp))
                runs.setdefault(f"{mode}_{badges}", []).append(result)
                one, many = result["one_connection"], result["sixteen_connections"]
                print(
                    f"  run {repeat + 1} {mode:9} {badges:4} badges: p50 {one['p50_ms']:7.1f} ms "
                    f"p99 {one['p99_ms']:7.1f} ms; {many['requests_per_s']:6.0f} req/s "
                    f"(16 connections, non-2xx {one['non_2xx'] + many['non_2xx']})"
                )

    def median(name: str, part: str, field: str) -> float:
        return round(statistics.median(r[part][field] for r in runs[name]), 1)

    summary: dict[str, dict] = {}
    print("\nrequest cost: POST /places/ (log a visit), one Daphne process")
    print(f"  {'':22} {'p50 ms':>8} {'p99 ms':>8} {'req/s (16 conn.)':>17}")
    for badges in counts:
        for mode in ("offloaded", "naive"):
            name = f"{mode}_{badges}"
            summary[name] = {
                "p50_ms": median(name, "one_connection", "p50_ms"),
                "p99_ms": median(name, "one_connection", "p99_ms"),
                "requests_per_s": median(name, "sixteen_connections", "requests_per_s"),
                "p50_ms_16_connections": median(name, "sixteen_connections", "p50_ms"),
                "p99_ms_16_connections": median(name, "sixteen_connections", "p99_ms"),
            }
            row = summary[name]
            print(
                f"  {mode + ', ' + str(badges) + ' badges':22} {row['p50_ms']:8.1f} "
                f"{row['p99_ms']:8.1f} {row['requests_per_s']:17.0f}"
            )
        offloaded, naive = summary[f"offloaded_{badges}"], summary[f"naive_{badges}"]
        ratio = naive["p50_ms"] / offloaded["p50_ms"]
        summary[f"ratio_{badges}"] = {
            "p50": round(ratio, 1),
            "requests_per_s": round(offloaded["requests_per_s"] / naive["requests_per_s"], 1),
        }
        print(
            f"  {badges} badges: offloaded p50 {ratio:.1f}x lower, "
            f"{summary[f'ratio_{badges}']['requests_per_s']:.1f}x the requests/s"
        )
    failures = sum(
        r[part]["non_2xx"]
        for results in runs.values()
        for r in results
        for part in ("one_connection", "sixteen_connections")
    )
    print(f"  requests that did not answer 200: {failures}")
    write_results(
        "request-cost",
        {
            "seconds": args.seconds,
            "repeats": args.repeats,
            "users": USERS,
            **summary,
            "failed_requests": failures,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    run_script(main)
