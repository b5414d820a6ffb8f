"""Replay: events/s that `replay_events` folds when rebuilding progress from the log.

Run from the project root (needs PostgreSQL on 127.0.0.1):

    .venv/bin/python bench/replay.py [--events 1000000] [--users 100000] [--repeats 3]

It loads a scratch database as bench/reports.py does (a year of events over
--users users, a few busy and most not; 20 badges, three tiered, two with
filters; progress and unlocks as live evaluation left them) and times
`replay_events()` over every user: events/s is the processed events folded
divided by the wall time.

The first run rebuilds what the loader wrote by hand, which does not match
the rules exactly, so it also writes many unlocks (reported apart). The
--repeats runs after it rebuild a state that matches, as a replay after a
lost table or a rule change mostly does; their median is the headline.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402


def main() -> None:
    from bench.reports import dataset_arguments, loaded_dataset

    args = dataset_arguments(__doc__.splitlines()[0], repeats=1)
    with loaded_dataset(args.events, args.users):
        from achievements.replay import replay_events

        runs = []
        for repeat in range(1 + args.repeats):
            started = time.perf_counter()
            report = replay_events()
            seconds = time.perf_counter() - started
            runs.append(
                {
                    "seconds": round(seconds, 1),
                    "events": report.events,
                    "users": report.users,
                    "events_per_s": round(report.events / seconds),
                    "newly_unlocked": len(report.newly_unlocked),
                }
            )
            print(
                f"  {'first run' if repeat == 0 else f'run {repeat + 1}'}: "
                f"{report.events:,} events of {report.users:,} users in "
                f"{seconds:.1f} s: {report.events / seconds:,.0f} events/s "
                f"({len(report.newly_unlocked):,} newly unlocked)"
            )
    rate = statistics.median(r["events_per_s"] for r in runs[1:])
    print(
        f"\nreplay_events over {args.events:,} events, {args.users:,} users: "
        f"{rate:,.0f} events/s (median)"
    )
    write_results(
        "replay",
        {
            "events": args.events,
            "users": args.users,
            "events_per_s": rate,
            "first_run_events_per_s": runs[0]["events_per_s"],
            "runs": runs,
        },
    )


if __name__ == "__main__":
    run_script(main)
