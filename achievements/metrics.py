"""Pipeline counters and histograms shared by every process, exposed in Prometheus text format.

Web processes record events, worker processes evaluate them, and a scrape
may land on any web process, so the numbers live in one Redis hash (the
cache database) that every process increments. In the embedded mode there is
one process and no Redis, and they live in memory. Recording never raises:
a metric is not worth failing an evaluation or a producer's request over.

Counters only go up; they restart from zero if Redis is flushed, which
Prometheus treats as a counter reset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Counters that are another metric's count, rendered from it rather than kept twice.
DERIVED_COUNTERS = {"accolade_events_processed_total": "accolade_evaluation_seconds_count"}
COUNTERS = {
    "accolade_events_received_total": "Events recorded (new, not duplicates).",
    "accolade_events_deduplicated_total": "Events recognised as duplicates, not recorded again.",
    "accolade_events_processed_total": "Events evaluated (the evaluation histogram's count).",
    "accolade_events_dead_lettered_total": "Events given up on after repeated failures.",
    "accolade_unlocks_total": "Unlocks written (every tier and period, silent ones included).",
    "accolade_stream_messages_total": "Messages taken from the event stream, all outcomes.",
    "accolade_stream_rejected_total": "Stream messages refused as malformed (dead letters).",
}
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "accolade_evaluation_seconds": (
        "Time to evaluate one event, claim to commit.",
        (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    ),
    "accolade_unlock_latency_seconds": (
        "From an event's receipt to the push of the unlock it caused.",
        (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    ),
}
# Gauges other apps add to /metrics (ingest's consumer lag): each callable
# gives (name, help, labels, value) rows; see add_gauges.
_gauge_sources: list[Callable[[], list[tuple[str, str, dict[str, str], float]]]] = []
WORKER_HEARTBEAT_SECONDS = 10
WORKER_STALE_SECONDS = 3 * WORKER_HEARTBEAT_SECONDS


def _namespace() -> str:
    return str(settings.ACCOLADE_NAMESPACE)


_clients: dict[str, Any] = {}
_client_lock = threading.Lock()


def redis_client(role: str = "cache") -> Any:
    """This process's client for one of REDIS_URL's databases, or None when embedded."""
    urls = settings.ACCOLADE_REDIS
    if not urls:
        return None
    with _client_lock:
        if role not in _clients:
            import redis

            _clients[role] = redis.Redis.from_url(
                urls[role], socket_timeout=2, socket_connect_timeout=2
            )
        return _clients[role]


class _Memory:
    """The embedded mode's store: one process, so a dict under a lock."""

    def __init__(self) -> None:
        self.values: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def add(self, items: Iterable[tuple[str, float]]) -> None:
        with self.lock:
            for field, amount in items:
                self.values[field] += amount

    def read(self) -> dict[str, float]:
        with self.lock:
            return dict(self.values)


_memory = _Memory()


def _key() -> str:
    return f"{_namespace()}:metrics"


# Within gathered(): this thread's recordings, sent at the block's end.
_gathering = threading.local()


@contextmanager
def gathered() -> Iterator[None]:
    """What the block records goes to Redis at its end, in one round trip.

    A batch records its evaluation time, its unlocks and their latency from
    three places; each was a round trip of its own before the drain could
    claim the next batch. Nested blocks send with the outermost; what was
    recorded is sent even if the block raises.
    """
    if getattr(_gathering, "items", None) is not None:
        yield
        return
    _gathering.items = []
    try:
        yield
    finally:
        items, _gathering.items = _gathering.items, None
        if items:
            _add(items)


def _add(items: list[tuple[str, float]]) -> None:
    gathering = getattr(_gathering, "items", None)
    if gathering is not None:
        gathering.extend(items)
        return
    client = redis_client()
    if client is None:
        _memory.add(items)
        return
    try:
        pipe = client.pipeline(transaction=False)
        _queue(pipe, items)
        pipe.execute()
    except Exception:
        logger.debug("Could not record metrics %s", [f for f, _ in items], exc_info=True)


def ride_along(pipe: Any) -> None:
    """Put what this thread has gathered so far on `pipe`, a pipeline to the
    cache's Redis about to be sent anyway: it goes in that round trip, not
    one of its own at the end of `gathered()`."""
    items = getattr(_gathering, "items", None)
    if items:
        _gathering.items = []
        _queue(pipe, items)


def _queue(pipe: Any, items: list[tuple[str, float]]) -> None:
    for field, amount in items:
        if float(amount).is_integer():
            pipe.hincrby(_key(), field, int(amount))
        else:
            pipe.hincrbyfloat(_key(), field, amount)


def _read() -> dict[str, float]:
    client = redis_client()
    if client is None:
        return _memory.read()
    raw = client.hgetall(_key())
    return {field.decode(): float(value) for field, value in raw.items()}


def incr(name: str, amount: int = 1) -> None:
    """Add to a counter (see COUNTERS)."""
    if amount:
        _add([(name, amount)])


def observe(name: str, values: Sequence[float]) -> None:
    """Record observations of a histogram (see HISTOGRAMS), in one round trip."""
    if not values:
        return
    _, buckets = HISTOGRAMS[name]
    per_bucket: Counter[str] = Counter()
    for value in values:
        # Stored per bucket (the first bound the value fits under); render adds them up.
        bound = next((b for b in buckets if value <= b), None)
        per_bucket[f"{name}_bucket:{'+Inf' if bound is None else _fmt(bound)}"] += 1
    # One increment per bucket, however many values: a batch observes thousands.
    _add(
        [
            (f"{name}_count", len(values)),
            (f"{name}_sum", sum(values)),
            *per_bucket.items(),
        ]
    )


def heartbeat(hostname: str) -> None:
    """A worker says it is alive (called every WORKER_HEARTBEAT_SECONDS)."""
    client = redis_client()
    if client is None:
        return
    try:
        client.hset(f"{_namespace()}:workers", hostname, f"{time.time():.3f}")
    except Exception:
        logger.debug("Could not record a worker heartbeat", exc_info=True)


def forget_worker(hostname: str) -> None:
    client = redis_client()
    if client is not None:
        try:
            client.hdel(f"{_namespace()}:workers", hostname)
        except Exception:
            logger.debug("Could not remove a worker heartbeat", exc_info=True)


def live_workers() -> list[str]:
    """Workers with a heartbeat in the last WORKER_STALE_SECONDS (raises if Redis is down)."""
    client = redis_client()
    if client is None:
        return []
    now = time.time()
    beats = client.hgetall(f"{_namespace()}:workers")
    return sorted(
        name.decode() for name, at in beats.items() if now - float(at) < WORKER_STALE_SECONDS
    )


def queue_depth() -> int | None:
    """Task messages waiting in the broker's queue; None in the embedded mode."""
    client = redis_client("broker")
    if client is None:
        return None
    return int(client.llen(settings.CELERY_TASK_DEFAULT_QUEUE))


def render() -> str:
    """Every metric in the Prometheus text exposition format (version 0.0.4)."""
    from achievements.models import Event

    try:
        values = _read()
    except Exception:
        # Redis is down: the counters are unknown, the database gauges still help.
        logger.warning("Could not read the metrics from Redis", exc_info=True)
        values = {}
    lines: list[str] = []
    for name, help_text in COUNTERS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines.append(f"{name} {_fmt(values.get(DERIVED_COUNTERS.get(name, name), 0))}")
    for name, (help_text, buckets) in HISTOGRAMS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0.0
        for bound in [*map(_fmt, buckets), "+Inf"]:
            running += values.get(f"{name}_bucket:{bound}", 0)
            lines.append(f'{name}_bucket{{le="{bound}"}} {_fmt(running)}')
        lines.append(f"{name}_sum {_fmt(values.get(f'{name}_sum', 0))}")
        lines.append(f"{name}_count {_fmt(values.get(f'{name}_count', 0))}")
    gauges: list[tuple[str, str, float | None]] = [
        (
            "accolade_events_pending",
            "Events recorded and not yet evaluated (nor dead-lettered).",
            Event.objects.unprocessed().count(),
        ),
        (
            "accolade_events_dead_lettered",
            "Events currently dead-lettered, waiting for staff.",
            Event.objects.dead_lettered().count(),
        ),
        ("accolade_queue_depth", "Task messages waiting in the broker.", _safe(queue_depth)),
        (
            "accolade_workers_alive",
            "Celery workers with a recent heartbeat.",
            None if settings.ACCOLADE_EMBEDDED else _safe(_count_workers),
        ),
    ]
    for name, help_text, value in gauges:
        if value is None:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_fmt(value)}"]
    lines += _added_gauges()
    return "\n".join(lines) + "\n"


def add_gauges(source: Callable[[], list[tuple[str, str, dict[str, str], float]]]) -> None:
    """Have /metrics also show the gauges `source` reads (once per process: an
    app's ready())."""
    if source not in _gauge_sources:
        _gauge_sources.append(source)


def _added_gauges() -> list[str]:
    lines: list[str] = []
    described: set[str] = set()
    for source in _gauge_sources:
        try:
            rows = source()
        except Exception:
            logger.warning("Could not read the gauges of %r", source, exc_info=True)
            continue
        for name, help_text, labels, value in rows:
            if name not in described:
                described.add(name)
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            label_text = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(labels.items()))
            lines.append(
                f"{name}{{{label_text}}} {_fmt(value)}" if labels else f"{name} {_fmt(value)}"
            )
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _count_workers() -> int:
    return len(live_workers())


def _safe(read: Any) -> float | None:
    try:
        value = read()
    except Exception:
        logger.warning("Could not read a metric from Redis", exc_info=True)
        return None
    return None if value is None else float(value)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def reset_for_tests() -> None:
    """Forget the in-memory values (embedded mode only)."""
    with _memory.lock:
        _memory.values.clear()
