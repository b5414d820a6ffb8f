"""bench/throughput.py's set-ups for two commits at once, interleaved run by run.

Run from the project root:

    .venv/bin/python bench/throughput_ab.py OLD [NEW] [--events 20000] [--repeats 5]

bench/compare.py runs a whole benchmark for one commit, then for the other:
minutes apart, on a machine whose speed can change by half between them.
This script starts both topologies side by side (each commit checked out
into a temporary worktree, with its own PostgreSQL database, Redis
namespace and Celery worker), and runs each measurement for one commit and
then at once for the other, swapping who goes first on every repeat. Only
one worker evaluates at any moment; the other topology idles. It prints,
per set-up, each commit's median and the median of the paired ratios
(new / old of the same repeat), and writes bench/results-throughput-ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare import _worktree  # noqa: E402

# Runs inside one commit's worktree, with that commit's bench and test code:
# it starts the topology, then answers one measurement per line of stdin.
DRIVER = r"""
import json, sys, tempfile
from pathlib import Path
from bench.throughput import BADGES, Bench
from tests.integration.stack import Topology

tmp = tempfile.mkdtemp(prefix="accolade-ab-")
topology = Topology(Path(tmp), extra_env={"ACCOLADE_LOG_LEVEL": "WARNING"})
topology.start(workers=1, concurrency=1)
bench = Bench(topology, int(sys.argv[1]))
bench.rate()  # warm-up: the workers' first batches, the database's caches
print("ready", flush=True)
try:
    for line in sys.stdin:
        step, _, arg = line.strip().partition(" ")
        if step == "quit":
            break
        if step == "badges-10":
            bench.restart_workers(1)
            topology.python(BADGES.format(count=10))
            value = bench.rate()
        elif step == "badges-1000":
            topology.python(BADGES.format(count=1000))
            value = bench.rate()
        elif step == "processes-2":
            topology.python(BADGES.format(count=10))
            bench.restart_workers(2)
            value = bench.rate()
        elif step == "history":
            size, repeat = map(int, arg.split())
            if repeat == 0 and size == 100:
                bench.restart_workers(1)  # from the 2 processes of the set-up before
            who = f"history{size}-{repeat}"
            bench.load(count=size, users=1, who=who, processed=True)
            value = bench.rate(users=1, who=who)
        else:
            raise SystemExit(f"unknown step {step!r}")
        print("result", json.dumps(value), flush=True)
finally:
    topology.stop()
"""

STEPS = {
    "1 process, 10 badges": "badges-10",
    "1 process, 1,000 badges": "badges-1000",
    "2 processes": "processes-2",
}


class Side:
    def __init__(self, label: str, tree: Path, sha: str, events: int) -> None:
        self.label, self.sha = label, sha
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(events)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.label} topology ended early")
            if line.strip() == word:
                return
            # Anything else on stdout (a management command's print) is not ours.

    def measure(self, step: str) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(step + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.label} topology ended during {step!r}")
            word, _, value = line.strip().partition(" ")
            if word == "result":
                return float(json.loads(value))

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.events < 1000 or args.repeats < 1:
        parser.error("--events must be at least 1000 and --repeats at least 1")
    values: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="accolade-ab-") as scratch:
        trees = {
            label: _worktree(commit, Path(scratch) / label)
            for label, commit in (("old", args.old), ("new", args.new))
        }
        sides: dict[str, Side] = {}
        try:
            for label, (tree, sha) in trees.items():
                sides[label] = Side(label, tree, sha, args.events)
            measurements = [
                (name, step) for _ in range(args.repeats) for name, step in STEPS.items()
            ]
            for size in (100, 100_000):
                measurements += [
                    (f"history of {size:,} events", f"history {size} {n}")
                    for n in range(args.repeats)
                ]
            for number, (name, step) in enumerate(measurements):
                order = ["old", "new"] if number % 2 == 0 else ["new", "old"]
                for label in order:
                    value = sides[label].measure(step)
                    values.setdefault(name, {"old": [], "new": []})[label].append(value)
                pair = values[name]
                print(
                    f"  {name:28} old {pair['old'][-1]:8.0f}  new {pair['new'][-1]:8.0f}  "
                    f"{pair['new'][-1] / pair['old'][-1] - 1:+7.1%}  ({order[0]} first)",
                    flush=True,
                )
        finally:
            for side in sides.values():
                side.close()
            for tree, _ in trees.values():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                )
    report(values, args, {label: sha for label, (_, sha) in trees.items()})


def report(
    values: dict[str, dict[str, list[float]]], args: argparse.Namespace, shas: dict[str, str]
) -> None:
    print(
        f"\nthroughput, {args.events:,} events per run, {args.repeats} interleaved pairs "
        f"(old {shas['old']}, new {shas['new']}), events/s"
    )
    print(f"  {'set-up':28} {'old':>8} {'new':>8} {'paired change (median)':>24}")
    figures = {}
    for name, pair in values.items():
        ratios = [new / old for old, new in zip(pair["old"], pair["new"], strict=True)]
        change = statistics.median(ratios) - 1
        old, new = statistics.median(pair["old"]), statistics.median(pair["new"])
        spread = f"{min(ratios) - 1:+.1%} .. {max(ratios) - 1:+.1%}"
        print(f"  {name:28} {old:8.0f} {new:8.0f} {change:+8.1%}  ({spread})")
        figures[name] = {
            "old": pair["old"],
            "new": pair["new"],
            "median_old": round(old, 1),
            "median_new": round(new, 1),
            "paired_change": round(change, 4),
        }
    (ROOT / "bench" / "results-throughput-ab.json").write_text(
        json.dumps({"old": shas["old"], "new": shas["new"], "figures": figures}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
