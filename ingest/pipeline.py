"""From stream messages to recorded events, whatever the stream (JetStream, Kafka).

A message is one event document (api.documents: the same fields, checks and
words as the HTTP API), from the producer its subject or topic names. `take`
records a batch of them and says what became of each; nothing here knows
the stream, so a consumer of another broker hands its messages here too.

A batch either returns (every message is then recorded, a duplicate, or
refused and written down as a `Rejected` row: safe to acknowledge) or
raises (the database is out of reach: acknowledge nothing, try the same
batch again). Recording is idempotent by (producer, event_id), so a batch
taken twice (the consumer killed after the commit, before the
acknowledgement) records nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from achievements import index, metrics
from achievements.events import (
    SOURCE_PATTERN,
    InvalidEvent,
    RecordedEvent,
    record_external_events,
)
from api.documents import event_from, parse_json
from ingest.models import ConsumerState, Rejected
from project.inputs import text_problem

SOURCE = "stream"
DATA_KEPT = 10_000


@dataclass(frozen=True)
class Incoming:
    """One message as the pipeline needs it, whatever the broker."""

    data: bytes
    producer: str | None  # from the subject or topic; None if it names none
    stream: str
    sequence: int  # unique within the stream: where a redelivery is recognised
    subject: str


@dataclass(frozen=True)
class Outcome:
    status: str  # "accepted", "duplicate" or "rejected"
    field: str = ""
    problem: str = ""


def producer_of(subject: str, prefix: str) -> str | None:
    """The producer a subject names: `<prefix>.<producer>` or `<prefix>.<producer>.<more>`."""
    if not subject.startswith(prefix + "."):
        return None
    producer = subject[len(prefix) + 1 :].split(".", 1)[0]
    return producer or None


def take(batch: list[Incoming]) -> list[Outcome]:
    """Record these messages' events, write down the refused ones; an outcome
    for each, in order. Raises if the database fails; what it recorded before
    is a duplicate when the batch is taken again."""
    outcomes: list[Outcome | None] = [None] * len(batch)
    known_types = index.accepted_event_types()
    # Consecutive messages of one producer are recorded together, runs in
    # stream order: A1 B1 A2 records A1, then B1, then A2.
    runs: list[tuple[str, list[tuple[int, Any]]]] = []
    for position, message in enumerate(batch):
        event, refusal = _read(message, known_types)
        if refusal is not None:
            outcomes[position] = refusal
            continue
        assert message.producer is not None
        if not runs or runs[-1][0] != message.producer:
            runs.append((message.producer, []))
        runs[-1][1].append((position, event))
    for producer, items in runs:
        recorded = record_external_events([event for _, event in items], producer=producer)
        for (position, _), result in zip(items, recorded, strict=True):
            if isinstance(result, InvalidEvent):
                outcomes[position] = Outcome("rejected", result.field, result.problem)
            else:
                assert isinstance(result, RecordedEvent)
                outcomes[position] = Outcome("accepted" if result.created else "duplicate")
    final = [outcome for outcome in outcomes if outcome is not None]
    assert len(final) == len(batch)
    _write_rejections(batch, final)
    metrics.incr("accolade_stream_messages_total", len(batch))
    metrics.incr("accolade_stream_rejected_total", sum(o.status == "rejected" for o in final))
    return final


def _read(message: Incoming, known_types: Any) -> tuple[Any, Outcome | None]:
    """The message's event, or why it is refused."""
    if message.producer is None:
        return None, Outcome(
            "rejected", "subject", f"{message.subject!r} names no producer (<prefix>.<producer>…)"
        )
    if not SOURCE_PATTERN.match(message.producer):
        return None, Outcome(
            "rejected",
            "subject",
            f"names the producer {message.producer[:80]!r}: a producer is 1-64 letters, digits, "
            "'_', ':' or '-', starting with a letter or digit",
        )
    limit = int(settings.ACCOLADE_API_MAX_BODY_BYTES)
    if len(message.data) > limit:
        return None, Outcome("rejected", "body", f"must be at most {limit} bytes")
    try:
        text = message.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Outcome("rejected", "body", f"is not valid UTF-8 (byte {exc.start})")
    document, problem = parse_json(text)
    if problem:
        return None, Outcome("rejected", "body", problem)
    if isinstance(document, dict) and "events" in document:
        return None, Outcome(
            "rejected", "events", "one event per message: publish each event on its own"
        )
    event = event_from(document, "", known_types, source=SOURCE)
    if isinstance(event, list):
        first = event[0]
        more = f" (and {len(event) - 1} more)" if len(event) > 1 else ""
        return None, Outcome("rejected", first["field"], first["problem"] + more)
    return event, None


def reject(message: Incoming, field: str, problem: str) -> Outcome:
    """Write this message down as a dead letter, for a reason found outside `take`."""
    outcome = Outcome("rejected", field, problem)
    _write_rejections([message], [outcome])
    metrics.incr("accolade_stream_messages_total")
    metrics.incr("accolade_stream_rejected_total")
    return outcome


def _write_rejections(batch: list[Incoming], outcomes: list[Outcome]) -> None:
    rows = []
    for message, outcome in zip(batch, outcomes, strict=True):
        if outcome.status != "rejected":
            continue
        text = message.data[: DATA_KEPT * 4].decode("utf-8", "replace")[:DATA_KEPT]
        rows.append(
            Rejected(
                stream=message.stream,
                sequence=message.sequence,
                subject=message.subject[:255],
                producer=(message.producer or "")[:64],
                event_id=_event_id(text)[:128],
                field=outcome.field[:128],
                problem=outcome.problem[:500],
                data=text.replace("\x00", "\ufffd"),
            )
        )
    if rows:
        with transaction.atomic():
            Rejected.objects.bulk_create(rows, ignore_conflicts=True)


def _event_id(text: str) -> str:
    """The document's event_id, if it has a readable one (to find the rejection by)."""
    document, problem = parse_json(text) if len(text) < DATA_KEPT else (None, "long")
    if problem or not isinstance(document, dict):
        return ""
    value = document.get("event_id")
    if isinstance(value, str) and text_problem(value, max_length=128) is None:
        return value
    return ""


def report_lag(
    name: str,
    *,
    stream: str,
    filter_subject: str,
    pending: int,
    unacknowledged: int,
    last_sequence: int,
    holder: str,
) -> None:
    """Keep the consumer's last report, for /metrics and the admin."""
    ConsumerState.objects.update_or_create(
        name=name,
        defaults={
            "stream": stream,
            "filter_subject": filter_subject,
            "pending": pending,
            "unacknowledged": unacknowledged,
            "last_sequence": last_sequence,
            "holder": holder[:200],
            "updated_at": timezone.now(),
        },
    )


def lag_gauges() -> list[tuple[str, str, dict[str, str], float]]:
    """/metrics: each consumer's lag and the age of its last report."""
    now = timezone.now()
    rows: list[tuple[str, str, dict[str, str], float]] = []
    for state in ConsumerState.objects.all():
        labels = {"consumer": state.name}
        rows.append(
            (
                "accolade_stream_lag_messages",
                "Stream messages not yet recorded: pending plus taken and unacknowledged.",
                labels,
                float(state.lag),
            )
        )
        rows.append(
            (
                "accolade_stream_report_age_seconds",
                "Seconds since the consumer last reported (it reports every few seconds).",
                labels,
                round((now - state.updated_at).total_seconds(), 1),
            )
        )
    return rows
