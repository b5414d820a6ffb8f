"""The in-flight registry: which events each running batch holds, and which process runs it.

A batch that kills its worker process (SIGKILL, out of memory, the hard time
limit) raises nothing and leaves no trace in the database: its transaction
rolls back and its events wait again. The registry, a Redis hash written
before the work starts and cleared after, is how a later drain learns that
the batch died and which events were in it, so that an event that kills
every batch holding it is singled out instead of killing the next one too.

An entry is *lost* when its process is known to be gone: on this machine,
its pid is no longer running; elsewhere, its worker's heartbeat has
stopped (`metrics.WORKER_STALE_SECONDS`); and in any case once it is older
than `LOST_AFTER_SECONDS`, the drain task's hard time limit and then some.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from achievements import metrics

logger = logging.getLogger(__name__)

# Longer than the drain task's hard time limit: an in-flight batch older than
# this died with its worker, whoever ran it.
LOST_AFTER_SECONDS = 150

BATCH = "batch"  # events claimed by a drain's ordinary batch
CHUNK = "chunk"  # a slice of a lost batch, tried again as a smaller batch


@dataclass(frozen=True)
class Entry:
    started: float
    kind: str
    machine: str
    pid: int
    worker: str
    event_pks: tuple[int, ...]


def _key() -> str:
    return f"{metrics._namespace()}:evaluation-batches"


def _machine() -> str:
    return socket.gethostname()


def _worker_name() -> str:
    """The Celery node running this code ("" outside a task): its heartbeat says it lives."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    return str(getattr(request, "hostname", "") or "")


def encode(entry: Entry) -> str:
    pks = ",".join(map(str, entry.event_pks))
    return f"{entry.started:.3f}|{entry.kind}|{entry.machine}|{entry.pid}|{entry.worker}|{pks}"


def decode(value: str) -> Entry:
    parts = value.split("|")
    if len(parts) == 2:  # written before entries named their owner: only its age tells
        started, pks = parts
        kind, machine, pid, worker = BATCH, "", "0", ""
    else:
        started, kind, machine, pid, worker, pks = parts
    return Entry(
        started=float(started),
        kind=kind,
        machine=machine,
        pid=int(pid),
        worker=worker,
        event_pks=tuple(int(pk) for pk in pks.split(",") if pk),
    )


def register(batch_id: str, event_pks: Sequence[int], kind: str = BATCH) -> None:
    """Say this process is about to evaluate these events (before any work on them)."""
    client = metrics.redis_client()
    if client is None or not event_pks:
        return
    entry = Entry(time.time(), kind, _machine(), os.getpid(), _worker_name(), tuple(event_pks))
    try:
        client.hset(_key(), batch_id, encode(entry))
    except Exception:
        # Go on: the events are safe in the database either way; only a crash
        # in this batch would now go unnoticed (and be retried as a batch).
        logger.warning("Could not register in-flight batch %s", batch_id, exc_info=True)


def landed(batch_id: str) -> None:
    client = metrics.redis_client()
    if client is None:
        return
    try:
        client.hdel(_key(), batch_id)
    except Exception:
        # Left behind, the entry is found lost later; its events are processed
        # by then, so recovery finds nothing to do.
        logger.warning("Could not clear in-flight batch %s", batch_id, exc_info=True)


def pending() -> int:
    """How many batches are registered (running or lost); 0 without Redis."""
    client = metrics.redis_client()
    if client is None:
        return 0
    return int(client.hlen(_key()))


def take_lost() -> list[Entry]:
    """Remove and return the entries whose process is gone. Two processes looking
    at once each get a different share (the removal decides)."""
    client = metrics.redis_client()
    if client is None:
        return []
    key = _key()
    try:
        entries = {
            batch_id: decode(value.decode()) for batch_id, value in client.hgetall(key).items()
        }
    except Exception:
        logger.warning("Could not read the in-flight batches", exc_info=True)
        return []
    now = time.time()
    here = _machine()
    live: set[str] | None = None
    lost: list[Entry] = []
    for batch_id, entry in entries.items():
        age = now - entry.started
        gone = age > LOST_AFTER_SECONDS
        if not gone and entry.pid and entry.machine == here:
            gone = not process_running(entry.pid)
        elif not gone and entry.worker and age > metrics.WORKER_STALE_SECONDS:
            if live is None:
                live = _live_workers()
            gone = live is not None and entry.worker not in live
        if gone and client.hdel(key, batch_id):
            lost.append(entry)
    return lost


def _live_workers() -> set[str] | None:
    try:
        return set(metrics.live_workers())
    except Exception:
        return None  # unknown: leave it to the entry's age


def process_running(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # "pid (name) state ...": the state follows the last parenthesis.
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
