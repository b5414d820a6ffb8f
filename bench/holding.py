"""What holding a badge only while its rule holds costs the evaluation core.

Run from the project root:

    .venv/bin/python bench/holding.py [--events 20000] [--users 200] [--repeats 7]

The pure core (achievements.core.evaluate), in process, no database: the
same events folded through the same badge ("3 in the last 7 days", a
rolling count, and "a 3-day streak") kept for good, and held only while its
rule holds. The events are a month of activity for many users (Zipf-like:
a few very active, most rare), in batches of 500 evaluated one after the
other onto the same stored state, as the engine does. The two are run in
turn, swapping which goes first each repeat; the figure is events per
second, and the paired ratio (holding / kept) of each repeat.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from achievements import core  # noqa: E402
from achievements.progress import Spec  # noqa: E402
from achievements.rules import Kind, Scope  # noqa: E402
from bench.common import write_results  # noqa: E402

START = datetime(2026, 11, 1, tzinfo=UTC)
BATCH = 500


def events(count: int, users: int, seed: int = 7) -> list[core.Occurrence]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(users)]
    who = rng.choices(range(1, users + 1), weights=weights, k=count)
    moments = sorted(START + timedelta(seconds=rng.uniform(0, 30 * 86_400)) for _ in who)
    return [
        core.Occurrence(n + 1, f"e{n}", "a.done", user, {}, moment)
        for n, (user, moment) in enumerate(zip(who, moments, strict=True))
    ]


def rules(holding: bool) -> core.RuleSet:
    window = Spec(1, Decimal(3), event_type="a.done", scope=Scope.ROLLING, window_days=7)
    streak = Spec(2, Decimal(3), kind=Kind.STREAK, event_type="a.done")
    return core.RuleSet(
        {
            1: core.BadgeRule(1, (window,), version_id=1, holds_while=holding),
            2: core.BadgeRule(2, (streak,), version_id=1, holds_while=holding),
        }
    )


def fold(history: list[core.Occurrence], holding: bool) -> tuple[float, int, int]:
    """Seconds for the whole history in batches; earnings and losses told."""
    ruleset = rules(holding)
    pairs: dict[tuple[int, int], core.Pair] = {}
    earned = lost = 0
    started = time.perf_counter()
    for start in range(0, len(history), BATCH):
        batch = history[start : start + BATCH]
        wanted = {(e.user_id, badge) for e in batch for badge in (1, 2)}
        for key in wanted:
            pairs.setdefault(key, core.Pair(*key))
        now = batch[-1].occurred_at
        outcomes = core.evaluate({k: pairs[k] for k in wanted}, ruleset, batch, now=now)
        for outcome in outcomes.values():
            earned += len(outcome.earned)
            lost += len(outcome.lapsed) + sum(e.ended_at is not None for e in outcome.earned)
            for held in outcome.pair.held.values():  # as the store reads them back
                held.pk, held.earning = held.pk or 1, None
    return time.perf_counter() - started, earned, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    history = events(args.events, args.users)
    rates: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    told = {}
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        took = {}
        for holding in order:
            seconds, earned, lost = fold(history, holding)
            took[holding] = seconds
            rates[holding].append(args.events / seconds)
            told[holding] = (earned, lost)
        ratios.append(took[False] / took[True])
    print(f"{args.events:,} events, {args.users} users, {args.repeats} interleaved pairs")
    for holding, label in ((False, "kept for good"), (True, "held while met")):
        earned, lost = told[holding]
        print(
            f"  {label:16} {statistics.median(rates[holding]):9,.0f} events/s"
            f"   ({earned} earnings, {lost} losses)"
        )
    print(
        f"  held while met / kept: {statistics.median(ratios):.2f}"
        f" ({min(ratios):.2f} .. {max(ratios):.2f})"
    )
    write_results(
        "holding",
        {
            "events": args.events,
            "users": args.users,
            "repeats": args.repeats,
            "kept_events_per_second": statistics.median(rates[False]),
            "holding_events_per_second": statistics.median(rates[True]),
            "paired_ratio": statistics.median(ratios),
            "told": {"kept": told[False], "holding": told[True]},
        },
    )


if __name__ == "__main__":
    main()
