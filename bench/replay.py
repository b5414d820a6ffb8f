"""Replay: events/s that `replay_events` folds when rebuilding progress from the log.

Run from the project root (needs PostgreSQL on 127.0.0.1):

    .venv/bin/python bench/replay.py [--events 1000000] [--users 100000] [--repeats 2]
                                     [--processes 1,2]

It loads a scratch database as bench/reports.py does (a year of events over
--users users, a few busy and most not; 20 badges, three tiered, two with
filters; progress and unlocks as live evaluation left them) and times
`replay_events(processes=N)` over every user for each N of --processes:
events/s is the processed events folded divided by the wall time.

The first run (in the most processes) rebuilds what the loader wrote by
hand, which does not match the rules exactly, so it also writes many unlocks
(reported apart). The --repeats runs after it rebuild a state that matches,
as a replay after a rule change that moved few users mostly does; their
median per process count is the result, and the most processes' the headline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402


def main() -> None:
    from bench.reports import dataset_arguments, loaded_dataset

    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--processes",
            type=_counts,
            default=[1, 2],
            help="process counts to time, comma-separated (default 1,2)",
        )

    args = dataset_arguments(__doc__.splitlines()[0], repeats=2, more=more)
    counts: list[int] = args.processes
    with loaded_dataset(args.events, args.users):
        from achievements.replay import replay_events

        def timed(label: str, processes: int) -> dict:
            started = time.perf_counter()
            report = replay_events(processes=processes)
            seconds = time.perf_counter() - started
            print(
                f"  {label}, {processes} process{'es' if processes > 1 else ''}: "
                f"{report.events:,} events of {report.users:,} users in {seconds:.1f} s: "
                f"{report.events / seconds:,.0f} events/s "
                f"({len(report.newly_unlocked):,} newly unlocked)",
                flush=True,
            )
            return {
                "processes": processes,
                "seconds": round(seconds, 1),
                "events": report.events,
                "users": report.users,
                "events_per_s": round(report.events / seconds),
                "newly_unlocked": len(report.newly_unlocked),
            }

        first = timed("first run", max(counts))
        runs = {n: [timed(f"run {r + 1}", n) for r in range(args.repeats)] for n in counts}
    rates = {n: statistics.median(run["events_per_s"] for run in runs[n]) for n in counts}
    print(f"\nreplay_events over {args.events:,} events, {args.users:,} users (median):")
    for n in counts:
        print(
            f"  {n} process{'es' if n > 1 else ''}: {rates[n]:,.0f} events/s"
            f" (x{rates[n] / rates[counts[0]]:.2f})"
        )
    write_results(
        "replay",
        {
            "events": args.events,
            "users": args.users,
            "events_per_s": rates[max(counts)],
            "processes": max(counts),
            "events_per_s_by_processes": {str(n): rates[n] for n in counts},
            "first_run_events_per_s": first["events_per_s"],
            "runs": [first, *(run for n in counts for run in runs[n])],
        },
    )


def _counts(value: str) -> list[int]:
    try:
        counts = [int(n) for n in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, not {value!r}"
        ) from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError("every count must be at least 1")
    return counts


if __name__ == "__main__":
    run_script(main)
