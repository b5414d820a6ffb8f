"""The feed on, writing to a directory of the test's own."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from achievements import metrics
from feed import export, outbox


@pytest.fixture
def feed_dir(tmp_path, settings):
    directory = tmp_path / "feed"
    # A new STORAGES setting drops the storages Django built (its setting_changed).
    settings.STORAGES = {
        **settings.STORAGES,
        "accolade_feed": {
            "BACKEND": "feed.storage.FeedDirectory",
            "OPTIONS": {"location": directory},
        },
    }
    outbox.connect()
    metrics.add_gauges(export.gauges)
    yield directory
    outbox.disconnect()


def read_feed(directory: Path) -> list[dict]:
    """Every record of every file, in file order."""
    found = []
    for path in sorted(directory.glob("v1/date=*/part-*.ndjson.gz")):
        with gzip.open(path, "rt") as lines:
            found += [json.loads(line) for line in lines]
    return found
