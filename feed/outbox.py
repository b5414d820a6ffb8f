"""The feed's outbox: records written in the transaction of what they tell.

`write_batch` receives `achievements.engine.evaluated` and `write_ledger`
`ledger_written`, both inside the transaction that wrote the facts, and add
one `Batch` row each: one INSERT however many records, so the cost to an
evaluation is putting the lines together, and whatever the exporter (or a
reader of the files) is doing, it is the same.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.utils import timezone

from achievements.core import Decision
from achievements.engine import Claimed, evaluated
from achievements.models import Event, LedgerEntry
from achievements.models.ledger import ledger_written
from feed import records
from feed.models import Batch


def _add(lines: list[str], now: datetime) -> None:
    if lines:
        text = "\n".join(lines) + "\n"
        Batch.objects.create(
            written_at=now, records=len(lines), data=zlib.compress(text.encode(), 1)
        )


def write_batch(
    sender: Any,
    events: Sequence[Claimed],
    decisions: Sequence[Decision],
    now: datetime,
    **kwargs: Any,
) -> None:
    """An evaluated batch's events and decisions (an `evaluated` receiver)."""
    _add(records.batch_lines(events, decisions, now), now)


def write_ledger(sender: Any, entries: list[LedgerEntry], **kwargs: Any) -> None:
    """Unlock records of these ledger entries (a `ledger_written` receiver)."""
    now = timezone.now()
    _add(records.ledger_lines(entries, now), now)


def connect() -> None:
    """Start writing the feed's records (ACCOLADE_FEED; the tests' fixture)."""
    evaluated.connect(write_batch, sender=Event, dispatch_uid="feed.outbox.batch")
    ledger_written.connect(write_ledger, sender=LedgerEntry, dispatch_uid="feed.outbox.ledger")


def disconnect() -> None:
    evaluated.disconnect(sender=Event, dispatch_uid="feed.outbox.batch")
    ledger_written.disconnect(sender=LedgerEntry, dispatch_uid="feed.outbox.ledger")
