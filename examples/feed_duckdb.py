"""A day of the analytics feed in DuckDB: the unlocks per badge of one day, the
figure of the reports' "Unlocks over time" (Reports › Unlocks, one day, a badge).

    pip install duckdb
    python examples/feed_duckdb.py var/feed 2026-12-08

It reads the day's directory and the next one (a batch written just before
midnight can be filed a moment after it) and counts by the unlock's own time,
in UTC as the reports do (TIME_ZONE). `COLUMNS` is the feed's schema 1 as
DuckDB types: every field any record has; a record leaves out the fields of
other kinds (docs/integrations.md, "The analytics feed").
"""

from __future__ import annotations

import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb

COLUMNS = {
    # Every record
    "schema": "INTEGER",
    "record": "VARCHAR",  # event, decision or unlock
    "dedup_key": "VARCHAR",
    "user_id": "BIGINT",
    "processing_time": "TIMESTAMPTZ",
    # Events and decisions
    "event_id": "VARCHAR",
    "producer": "VARCHAR",
    "event_type": "VARCHAR",
    "event_time": "TIMESTAMPTZ",
    "received_time": "TIMESTAMPTZ",  # events only
    # Decisions and unlocks
    "badge_id": "BIGINT",
    "badge": "VARCHAR",
    "rule_version": "INTEGER",
    "rule_id": "BIGINT",  # decisions: the requirement
    "decision": "VARCHAR",
    # Unlocks
    "change": "VARCHAR",  # earned, granted, revoked, expired or lapsed
    "unlock_id": "BIGINT",
    "tier": "INTEGER",
    "period": "VARCHAR",
    "effective_time": "TIMESTAMPTZ",
    "unlocked_at": "TIMESTAMPTZ",
    "silent": "BOOLEAN",
    "cause": "VARCHAR",  # rule, schedule, staff or api
    "event_ids": "VARCHAR[]",
}


def connect(directory: str | Path, day: date) -> duckdb.DuckDBPyConnection:
    """A connection with the view `feed`: the records of `day` and the day after,
    each once (a file written again after a crash holds the same records)."""
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    files = [
        str(path)
        for d in (day, day + timedelta(days=1))
        for path in sorted(Path(directory, "v1", f"date={d.isoformat()}").glob("*.ndjson.gz"))
    ]
    if not files:
        raise SystemExit(f"No feed files for {day} under {directory}")
    connection.read_json(files, columns=COLUMNS, format="newline_delimited").create_view("raw")
    connection.execute(
        "CREATE VIEW feed AS SELECT DISTINCT ON (dedup_key) * FROM raw ORDER BY dedup_key"
    )
    return connection


def unlocks_per_badge(directory: str | Path, day: date) -> dict[str, int]:
    """Earnings (by rules or by staff) of each badge on `day`."""
    rows = (
        connect(directory, day)
        .execute(
            """
            SELECT badge, count(*) FROM feed
            WHERE record = 'unlock' AND change IN ('earned', 'granted')
              AND CAST(unlocked_at AS DATE) = ?
            GROUP BY badge ORDER BY badge
            """,
            [day],
        )
        .fetchall()
    )
    return dict(rows)


if __name__ == "__main__":
    directory, day = sys.argv[1], date.fromisoformat(sys.argv[2])
    for badge, unlocks in unlocks_per_badge(directory, day).items():
        print(f"{badge:40} {unlocks:>8}")
