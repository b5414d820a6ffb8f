"""The exporter: waiting batches into gzipped newline-delimited JSON files.

Files are named `v1/date=<UTC day>/part-<number>.ndjson.gz` in the feed
storage (a layout DuckDB, Spark and pandas read as a partitioned data set),
each with the records of up to `BATCHES_PER_FILE` batches of one UTC day, in
the order they were written. Celery beat runs `export_due` every
ACCOLADE_FEED_INTERVAL_SECONDS (the embedded sweeper does in the embedded
mode). Exporters that overlap take turns: files are claimed under a
transaction's advisory lock, and written under their row's lock, so each
batch goes to one file and each file is written by one. A run writes what
waited when it began, then stops. Nobody waits for it: a feed that falls
behind, or a storage that is down, leaves batches waiting in the outbox
while evaluation goes on, and the next run catches up.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.db import connection, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from feed.models import Batch, File

logger = logging.getLogger(__name__)

STORAGE = "accolade_feed"
PREFIX = "v1"
BATCHES_PER_FILE = 500
# The lock a claim of batches holds to its commit (a transaction's advisory
# lock: nothing to release, whatever pools the connection).
_CLAIM_LOCK = 0x0FEED


def storage() -> Storage:
    return storages[STORAGE]


def export_due() -> int:
    """Write what waited when the run began into files, and drop files past their
    keep; the number of files written."""
    written = 0
    last = Batch.objects.order_by("-pk").values_list("pk", flat=True).first()
    done: set[int] = set()
    while last is not None and (file := _next_file(last, done)) is not None:
        if _write(file):
            written += 1
        done.add(file.pk)
    prune()
    if written:
        logger.info("Wrote %d feed file(s)", written)
    return written


def _claim_lock() -> bool:
    if connection.vendor != "postgresql":
        return True  # SQLite writes one transaction at a time
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_CLAIM_LOCK])
        (held,) = cursor.fetchone()
    return bool(held)


def _next_file(last: int, done: set[int]) -> File | None:
    """A file named before whose writing did not finish (not one this run has
    seen to), or else a new one with the next waiting batches of one day, up to
    batch `last`, claimed for it. None when nothing is left, or when another
    exporter is claiming."""
    with transaction.atomic():
        unfinished = (
            File.objects.filter(written_at__isnull=True)
            .exclude(pk__in=done)
            .order_by("pk")
            .first()
        )
        if unfinished is not None:
            return unfinished
        if not _claim_lock():
            logger.info("Another exporter is claiming feed batches; this run stops")
            return None
        first = Batch.objects.filter(file__isnull=True, pk__lte=last).order_by("pk").first()
        if first is None:
            return None
        day = first.written_at.astimezone(UTC).date()
        starts = datetime.combine(day, time.min, tzinfo=UTC)
        ids = list(
            Batch.objects.filter(
                file__isnull=True,
                pk__lte=last,
                written_at__gte=starts,
                written_at__lt=starts + timedelta(days=1),
            )
            .order_by("pk")
            .values_list("pk", flat=True)[:BATCHES_PER_FILE]
        )
        file = File.objects.create(name=f".naming-{first.pk}", day=day)
        file.name = f"{PREFIX}/date={day.isoformat()}/part-{file.pk:08d}.ndjson.gz"
        file.save(update_fields=["name"])
        Batch.objects.filter(pk__in=ids, file__isnull=True).update(file=file)
        return file


def _write(file: File) -> bool:
    """Write the file's batches, whole, under its name, then forget them; False if
    another exporter wrote it meanwhile."""
    with transaction.atomic():
        file = File.objects.select_for_update().get(pk=file.pk)
        if file.written_at is not None:
            return False
        buffer = io.BytesIO()
        records = 0
        # mtime=0: written again after a crash, the file is the same bytes.
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as out:
            for count, data in (
                Batch.objects.filter(file=file)
                .order_by("pk")
                .values_list("records", "data")
                .iterator(chunk_size=20)
            ):
                out.write(zlib.decompress(data))
                records += count
        storage().save(file.name, ContentFile(buffer.getvalue()))
        Batch.objects.filter(file=file).delete()
        file.written_at = timezone.now()
        file.records = records
        file.size = buffer.tell()
        file.save(update_fields=["written_at", "records", "size"])
    return True


def prune(now: datetime | None = None) -> int:
    """Delete the files of days older than ACCOLADE_FEED_KEEP_DAYS (0: keep all),
    once they were written that long ago too: records that waited out an outage
    get their days of being read."""
    keep = settings.ACCOLADE_FEED_KEEP_DAYS
    if not keep:
        return 0
    now = now or timezone.now()
    first_kept = now.astimezone(UTC).date() - timedelta(days=keep - 1)
    old = File.objects.filter(day__lt=first_kept, written_at__lt=now - timedelta(days=keep))
    names = list(old.values_list("name", flat=True))
    for name in names:
        storage().delete(name)
    old.delete()
    return len(names)


def gauges() -> list[tuple[str, str, dict[str, str], float]]:
    """/metrics: what waits for the exporter."""
    outbox = Batch.objects.aggregate(
        count=Count("pk"), waiting=Min("written_at", filter=Q(file__isnull=True))
    )
    count, waiting = outbox["count"], outbox["waiting"]
    age = (timezone.now() - waiting).total_seconds() if waiting is not None else 0.0
    return [
        (
            "accolade_feed_waiting_batches",
            "Batches of records in the feed's outbox, not yet in a file.",
            {},
            float(count),
        ),
        (
            "accolade_feed_oldest_waiting_seconds",
            "Age of the oldest batch not yet claimed for a file (0: none waits).",
            {},
            round(age, 1),
        ),
    ]
