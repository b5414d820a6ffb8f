"""The analytics feed on the real topology: a worker and the exporter both killed
with SIGKILL mid-work; every event in the files once, every unlock once."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pytest

from tests.integration.stack import Topology
from tests.integration.test_faults import UNPROCESSED, _wait_for_at_least, load

pytestmark = pytest.mark.topology

WAITING = "SELECT count(*) FROM feed_batch"


def lines(directory: Path) -> list[str]:
    found = []
    for path in sorted(directory.glob("v1/date=*/part-*.ndjson.gz")):
        with gzip.open(path, "rt") as file:
            found += file.read().splitlines()
    return found


def test_killed_workers_and_exporters_leave_every_record_in_the_files_once(tmp_path):
    feed = tmp_path / "feed"
    topology = Topology(
        tmp_path,
        extra_env={
            "ACCOLADE_FEED": "1",
            "ACCOLADE_FEED_DIR": str(feed),
            "ACCOLADE_FEED_INTERVAL_SECONDS": "1",
            "ACCOLADE_SWEEP_AGE_SECONDS": "3",
            "ACCOLADE_SWEEP_INTERVAL_SECONDS": "1",
            "ACCOLADE_EVALUATION_BATCH_SIZE": "25",
        },
    )
    try:
        topology.start(workers=1, concurrency=2, beat=True)
        exporter = topology.start_procfile("webhooks", r"ready\.")
        loader = threading.Thread(
            target=load,
            kwargs={
                "topology": topology,
                "count": 1500,
                "users": ["alice", "bob"],
                "prefix": "feed",
                "threshold": 600,
                "threads": 8,
            },
        )
        loader.start()
        processed = "SELECT count(*) FROM achievements_event WHERE processed_at IS NOT NULL"
        _wait_for_at_least(topology, processed, 300)
        topology.kill(topology.workers[0])  # mid-batch: its transaction never commits
        deadline = time.monotonic() + 60
        while not list(feed.rglob("*.gz")) and time.monotonic() < deadline:
            time.sleep(0.1)
        topology.kill(exporter)  # between files, or mid-file
        topology.start_worker(concurrency=2)
        loader.join(timeout=300)
        topology.wait_until(UNPROCESSED, 0, timeout=180)
        topology.start_procfile("webhooks", r"ready\.")
        topology.wait_until(WAITING, 0, timeout=60)

        records = [json.loads(line) for line in lines(feed)]
        events = [r for r in records if r["record"] == "event"]
        [(count,)] = topology.query("SELECT count(*) FROM achievements_event")
        assert len(events) == count >= 1500  # the demo's own events and ours
        ours = {r["event_id"] for r in events if r["event_id"].startswith("feed-")}
        assert ours == {f"feed-{n}" for n in range(1500)}
        keys = [r["dedup_key"] for r in records]
        assert len(keys) == len(set(keys))  # not even in two files: nothing to deduplicate
        [(unlocks,)] = topology.query("SELECT count(*) FROM achievements_ledgerentry")
        assert sum(r["record"] == "unlock" for r in records) == unlocks
        decisions = {r["dedup_key"] for r in records if r["record"] == "decision"}
        assert len(decisions) >= 1500  # every event of ours met visits_count's rule
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()
