"""Where a Celery worker's time goes on the throughput workload: py-spy on one solo worker.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1, and
py-spy: `.venv/bin/pip install py-spy`, not a dependency of the project):

    .venv/bin/python bench/profile_worker.py [--events 20000] [--runs 3] [--rate 200]

It starts the topology of bench/throughput.py without a worker, adds its
10 badges, then starts one `celery worker --pool solo` under `py-spy
record` (a solo pool: the evaluating code runs in the process py-spy
watches). It records --events waiting events over 1,000 users --runs
times, asks for one drain each time and waits for them, then prints each
run's rate (py-spy's sampling slows it: compare two commits with this, not
with bench/throughput.py) and the functions the most samples were in,
leaving out threads that wait. The raw stacks stay in --out for
flame-graph tools.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script  # noqa: E402
from bench.throughput import BADGES, Bench  # noqa: E402

IDLE = ("Condition.wait", "_epoll.poll", "select", "Event.wait")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", default=str(ROOT / "bench" / "profile-worker.txt"))
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    if args.events < 1000 or args.runs < 1:
        parser.error("--events must be at least 1000 and --runs at least 1")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    from tests.integration.stack import BIN, Topology

    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(Path(tmp), extra_env={"ACCOLADE_LOG_LEVEL": "WARNING"})
        topology.start(workers=0)
        try:
            topology.python(BADGES.format(count=10))
            bench = Bench(topology, args.events)
            worker = topology._spawn(
                "celery-worker-profiled",
                [spy, "record", "-r", str(args.rate), "-f", "raw", "-o", args.out, "--"]
                + [str(BIN / "celery"), "-A", "project", "worker", "--pool", "solo"]
                + ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
                + ["--hostname", f"profiled-{topology.database}@%h"],
            )
            worker.wait_for_output(r"ready\.", timeout=90)
            for run in range(args.runs):
                prefix = bench.load(count=args.events, users=1000)
                started = time.monotonic()
                topology.python("from achievements.dispatch import request_drain; request_drain()")
                committed = bench._wait(prefix)
                wall = time.monotonic() - started
                print(
                    f"  run {run + 1}: {args.events / bench._span(prefix, committed):7.0f} "
                    f"events/s (first claim to the last commit), {args.events / wall:7.0f} "
                    "events/s wall",
                    flush=True,
                )
            os.killpg(worker.popen.pid, signal.SIGINT)  # py-spy writes its file as the worker ends
            worker.popen.wait(60)
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()
    report(Path(args.out), args.top)


def report(path: Path, top: int) -> None:
    """The leaf functions the most samples were in, waiting threads left out."""
    leaves: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        if not leaf.startswith(IDLE):
            leaves[leaf] += int(samples)
    total = sum(leaves.values()) or 1
    print(f"\nbusy samples: {total} (raw stacks in {path})")
    for leaf, count in leaves.most_common(top):
        print(f"  {count / total * 100:5.1f} %  {leaf[:120]}")


if __name__ == "__main__":
    run_script(main)
