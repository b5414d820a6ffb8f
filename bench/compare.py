"""Two commits side by side: the same benchmarks, run in turn on this machine, in one go.

Run from the project root:

    .venv/bin/python bench/compare.py OLD [NEW] [--only evaluation,throughput,ingestion]
                                      [--rounds 1] [-- extra arguments for every bench]

Each commit (NEW defaults to HEAD) is checked out into a temporary
worktree that shares this checkout's .venv, so the code under test is
frozen while the runs last, and each benchmark runs for OLD, then NEW, in
turn (`--rounds 2` runs the pair twice, alternating which goes first), so a
machine that slows down over the minutes costs both alike. It prints every
figure of each benchmark's results file with the change from OLD to NEW,
and writes them to bench/results-compare.json (not kept in git: the table
worth keeping goes in docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {
    "evaluation": "results-evaluation.json",
    "throughput": "results-throughput.json",
    "ingestion": "results-ingestion.json",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--rounds", type=int, default=1)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    names = [name for name in args.only.split(",") if name]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(unknown)}")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="accolade-compare-") as scratch:
        trees = {
            label: _worktree(commit, Path(scratch) / label)
            for label, commit in (("old", args.old), ("new", args.new))
        }
        try:
            for name in names:
                results[name] = {"old": [], "new": []}
                for round_number in range(args.rounds):
                    order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
                    for label in order:
                        print(f"== {name}: {label} ({trees[label][1]})", flush=True)
                        results[name][label].append(_run(trees[label][0], name, extra))
        finally:
            for tree, _ in trees.values():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                )
    report = _report(results)
    print(report["table"])
    (ROOT / "bench" / "results-compare.json").write_text(
        json.dumps(
            {
                "old": args.old,
                "new": args.new,
                "figures": report["figures"],
            },
            indent=2,
        )
        + "\n"
    )


def _worktree(commit: str, path: Path) -> tuple[Path, str]:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), sha],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (path / ".venv").symlink_to(ROOT / ".venv")
    return path, sha


def _run(tree: Path, name: str, extra: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, str(tree / "bench" / f"{name}.py"), *extra], cwd=tree, env=env, check=True
    )
    return _figures(json.loads((tree / "bench" / BENCHES[name]).read_text()))


def _figures(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a results file, by its path ("single.events_per_s"), but the
    machine's and the run's settings."""
    figures: dict[str, float] = {}
    for key, value in data.items():
        if key in {"machine", "runs", "repeats", "events_per_run", "connections", "seconds"}:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            figures.update(_figures(value, f"{path}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            figures[path] = float(value)
    return figures


def _report(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    lines = [f"{'figure':58} {'old':>11} {'new':>11} {'change':>8}"]
    figures = []
    for name, runs in results.items():
        for path in runs["old"][0]:
            old = median(run[path] for run in runs["old"] if path in run)
            new_values = [run[path] for run in runs["new"] if path in run]
            if not new_values:
                continue
            new = median(new_values)
            change = (new - old) / old if old else 0.0
            figures.append(
                {"bench": name, "figure": path, "old": old, "new": new, "change": round(change, 4)}
            )
            lines.append(f"{name + ': ' + path:58} {old:11.1f} {new:11.1f} {change:+8.1%}")
    return {"table": "\n".join(lines), "figures": figures}


if __name__ == "__main__":
    main()
