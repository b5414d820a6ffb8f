"""Sending the outbox: one sender per endpoint, signed POSTs, retries, and endpoints that fail.

1. Something asks for an endpoint to be sent to: the commit of new messages
   (`kick`), or the sweep (`send_due`, every few seconds from celery beat, or
   the embedded sweeper) for retries that have come due and for a hand-over
   that was lost.
2. The asker takes the endpoint's lease (`claim_endpoint`: one UPDATE that
   succeeds for one asker only) and hands the endpoint to a sender: a Celery
   task on the webhooks queue, a thread in the embedded mode, or inline.
   One sender per endpoint at a time, so a slow receiver occupies one
   worker, never the others' nor evaluation's.
3. The sender (`send_endpoint`) POSTs the endpoint's due deliveries, oldest
   first, over one kept-alive connection to the address it checked, renewing
   the lease with each result, for up to a time budget; then it hands the
   endpoint on to a new sender if more is due, or lets the lease go and looks
   once more.
4. Each try is an Attempt. A 2xx delivers. Anything else is retried on the
   schedule below (about 28 hours in all), then the delivery is failed,
   for staff to send again. While an endpoint fails, a pass tries one
   delivery and stops. While it cannot be reached at all (no connection, no
   answer in time, 502/503/504), its oldest waiting message is also tried
   early as a probe, at most once a minute, without using up one of that
   message's retries; when it answers again everything waiting for it is due
   at once, so a receiver back from an outage catches up within a minute,
   not at its messages' next retry hours later.
5. An endpoint that has failed every try for ACCOLADE_WEBHOOK_DISABLE_AFTER_HOURS
   (and at least a few times), or answers 410 Gone, is turned off, staff are
   told by email and on the admin's front page, and its messages wait for it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import urllib3
from celery import current_app
from django.conf import settings
from django.core.mail import mail_admins
from django.db import close_old_connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from webhooks.addresses import Refused, Target, resolve
from webhooks.models import TEST_KIND, Attempt, Delivery, Endpoint, Message, Status

logger = logging.getLogger(__name__)

# Seconds from a failed try to the next: the n-th failure waits RETRY_SCHEDULE[n-1].
# After the last, the delivery has been tried for about 28 hours and is failed.
RETRY_SCHEDULE = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
# A sender holds its endpoint this long past its last result (longer than one
# try can take: CONNECT_TIMEOUT + READ_TIMEOUT); one that died lets go when it
# runs out, and the next sweep hands the endpoint to another.
LEASE_SECONDS = 30
# A sender hands its endpoint on after this long, so one busy endpoint does
# not keep a worker to itself while others wait for one.
BUDGET_SECONDS = 20.0
# Deliveries read per query.
CHUNK = 100
# Results written per transaction (or every half second, whichever first).
RECORD_EVERY = 25
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 10.0
EXCERPT_CHARS = 500
# An endpoint is only turned off for failing after at least this many tries in a row.
DISABLE_MIN_FAILURES = 5
USER_AGENT = "Accolade-Webhooks/1"
# An endpoint that answers again after failing for this long is "back".
BACK_AFTER = timedelta(seconds=60)
# While an endpoint cannot be reached, it is probed after 5 s, 10 s, 20 s, ...
# and then every PROBE_CAP_SECONDS: cheap for a receiver that is down, and
# quick to notice it is up.
PROBE_FIRST_SECONDS, PROBE_CAP_SECONDS = 5, 60
# Answers that say the receiver itself is not there (a proxy in front of it
# is), rather than that it refused this one message.
UNREACHABLE_STATUSES = frozenset({502, 503, 504})


# --- asking for sends --------------------------------------------------------


def kick(endpoint_ids: list[int]) -> None:
    """Send what these endpoints have due now (called once new messages commit)."""
    for endpoint_id in endpoint_ids:
        start(endpoint_id)


def send_due() -> int:
    """Hand every endpoint with something due, and no sender, to a sender; how many."""
    now = timezone.now()
    due = Delivery.objects.due(now).filter(endpoint=OuterRef("pk"))
    waiting = Delivery.objects.filter(endpoint=OuterRef("pk"), status=Status.PENDING)
    endpoint_ids = list(
        Endpoint.objects.active()
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .filter(Exists(due) | (Q(probe_at__lte=now) & Exists(waiting)))
        .values_list("pk", flat=True)
    )
    return sum(start(endpoint_id) for endpoint_id in endpoint_ids)


def start(endpoint_id: int) -> bool:
    """Take the endpoint's lease and hand it to a sender; False if another holds it."""
    lease = claim_endpoint(endpoint_id, timezone.now())
    if lease is None:
        return False
    hand_over(endpoint_id, lease)
    return True


def claim_endpoint(endpoint_id: int, now: datetime) -> str | None:
    """The endpoint's lease, if nobody holds it: one UPDATE only one asker wins."""
    lease = uuid.uuid4().hex
    won = (
        Endpoint.objects.active()
        .filter(pk=endpoint_id)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .update(lease=lease, leased_until=now + timedelta(seconds=LEASE_SECONDS))
    )
    return lease if won == 1 else None


def release(endpoint_id: int, lease: str) -> None:
    Endpoint.objects.filter(pk=endpoint_id, lease=lease).update(lease="", leased_until=None)


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def hand_over(endpoint_id: int, lease: str) -> None:
    """Run the endpoint's sender as ACCOLADE_TASK_MODE says: Celery, a thread, or inline."""
    mode = settings.ACCOLADE_TASK_MODE
    if mode == "celery":
        try:
            current_app.send_task("webhooks.send_endpoint", args=[endpoint_id, lease])
        except Exception:
            # No broker: let the lease go, and the next sweep hands it over.
            logger.exception("Could not hand webhook endpoint %s to a sender", endpoint_id)
            release(endpoint_id, lease)
    elif mode == "thread":
        global _executor
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(
                    max_workers=2, thread_name_prefix="accolade-webhooks"
                )
        _executor.submit(_send_in_thread, endpoint_id, lease)
    else:
        send_endpoint(endpoint_id, lease)


def _send_in_thread(endpoint_id: int, lease: str) -> None:
    try:
        send_endpoint(endpoint_id, lease)
    except Exception:
        logger.exception("Sending to webhook endpoint %s failed", endpoint_id)
    finally:
        close_old_connections()


# --- the sender ----------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    status_code: int | None
    latency_ms: int | None
    error: str
    excerpt: str

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def send_endpoint(endpoint_id: int, lease: str) -> int:
    """Send the endpoint's due deliveries while holding its lease; how many went.

    Up to ACCOLADE_WEBHOOK_MAX_IN_FLIGHT requests at once, over as many
    kept-alive connections, oldest first; one at a time while the endpoint
    fails. Stops when nothing is due, the budget is spent (and hands over),
    the lease is lost, or a try fails (the next pass tries again).
    """
    started = time.monotonic()
    sent = 0
    width = max(1, int(settings.ACCOLADE_WEBHOOK_MAX_IN_FLIGHT))
    connections = Connections(width)
    try:
        while True:
            endpoint = Endpoint.objects.filter(pk=endpoint_id, lease=lease, is_active=True).first()
            if endpoint is None:
                return sent  # lost the lease, or turned off
            now = timezone.now()
            due = list(
                Delivery.objects.due(now)
                .filter(endpoint=endpoint)
                .select_related("message")
                .order_by("next_attempt_at", "id")[:CHUNK]
            )
            probe = False
            if not due and endpoint.probe_at is not None and endpoint.probe_at <= now:
                # Unreachable, and nothing on its schedule yet: try the oldest
                # waiting message early, to learn whether it is back.
                due = list(
                    Delivery.objects.filter(endpoint=endpoint, status=Status.PENDING)
                    .select_related("message")
                    .order_by("next_attempt_at", "id")[:1]
                )
                probe = bool(due)
            if not due:
                release(endpoint_id, lease)
                # Messages that committed while the lease was held asked nobody.
                if Delivery.objects.due(timezone.now()).filter(endpoint=endpoint).exists():
                    start(endpoint_id)
                return sent

            if endpoint.failing_since is not None:
                # Failing: one at a time, until it answers.
                result = connections.post(endpoint, due[0].message)
                kept = record(endpoint, [(due[0], result)], lease, probe=probe)
                sent, failed = sent + result.succeeded, not result.succeeded
            else:
                # Healthy: the chunk goes out `width` at a time, recorded as the
                # answers come (which renews the lease) while the rest are in flight.
                outcomes = connections.stream(endpoint, due, started + BUDGET_SECONDS)
                batch: list[tuple[Delivery, Result]] = []
                failed, kept, recorded_at = False, True, time.monotonic()
                try:
                    for delivery, result in outcomes:
                        batch.append((delivery, result))
                        failed = failed or not result.succeeded
                        if len(batch) >= RECORD_EVERY or time.monotonic() - recorded_at > 0.5:
                            kept, sent = record(endpoint, batch, lease), sent + _delivered(batch)
                            batch, recorded_at = [], time.monotonic()
                            if not kept:
                                break
                finally:
                    outcomes.close()  # stops what has not started, waits for what has
                if kept and batch:
                    kept, sent = record(endpoint, batch, lease), sent + _delivered(batch)
            if not kept or failed:
                if kept:
                    release(endpoint_id, lease)
                return sent
            if time.monotonic() - started > BUDGET_SECONDS:
                release(endpoint_id, lease)
                start(endpoint_id)
                return sent
    finally:
        connections.close()


def _delivered(batch: list[tuple[Delivery, Result]]) -> int:
    return sum(result.succeeded for _, result in batch)


class Connections:
    """A sender's connections to its endpoint: up to `width` requests at once,
    each on a kept-alive connection to the address checked for them."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.target: Target | None = None
        self.pool: Any = None
        self.threads: ThreadPoolExecutor | None = None

    def _pool_for(self, target: Target) -> Any:
        if target != self.target or self.pool is None:
            if self.pool is not None:
                self.pool.close()
            self.target, self.pool = target, _pool(target, self.width)
        return self.pool

    def post(self, endpoint: Endpoint, message: Message) -> Result:
        """One message's result."""
        try:
            target = resolve(endpoint.url)
        except Refused as exc:
            return Result(None, None, f"refused: {exc}", "")
        return post(self._pool_for(target), target, endpoint, message, timezone.now())

    def stream(
        self, endpoint: Endpoint, deliveries: list[Delivery], deadline: float
    ) -> Generator[tuple[Delivery, Result], None, None]:
        """Each delivery with its result, as they come, `width` in flight at
        once; after a failure, or past `deadline` (time.monotonic()), nothing
        more is started. Close it to stop early."""
        try:
            target = resolve(endpoint.url)
        except Refused as exc:
            yield deliveries[0], Result(None, None, f"refused: {exc}", "")
            return
        pool = self._pool_for(target)
        if self.threads is None:
            self.threads = ThreadPoolExecutor(self.width, thread_name_prefix="accolade-webhook")
        stop = threading.Event()

        def one(delivery: Delivery) -> tuple[Delivery, Result | None]:
            if stop.is_set() or time.monotonic() > deadline:
                return delivery, None
            result = post(pool, target, endpoint, delivery.message, timezone.now())
            if not result.succeeded:
                stop.set()
            return delivery, result

        futures = [self.threads.submit(one, delivery) for delivery in deliveries]
        try:
            for future in as_completed(futures):
                delivery, result = future.result()
                if result is not None:
                    yield delivery, result
        finally:
            stop.set()
            wait(futures)

    def close(self) -> None:
        if self.threads is not None:
            self.threads.shutdown(wait=True)
        if self.pool is not None:
            self.pool.close()


def _pool(target: Target, size: int = 1) -> Any:
    """A connection pool to the checked address, speaking to the URL's host."""
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=size,
            block=True,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
        )
    return urllib3.HTTPConnectionPool(
        target.address, target.port, timeout=timeout, retries=False, maxsize=size, block=True
    )


def signed_headers(
    endpoint: Endpoint, message: Message, body: str, now: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers: the message's id, the send time, and a
    signature per secret in use (two during a rotation's grace period)."""
    signatures = " ".join(
        Webhook(secret).sign(message.id, now, body) for secret in endpoint.secrets_in_use(now)
    )
    return {
        "webhook-id": message.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def post(pool: Any, target: Target, endpoint: Endpoint, message: Message, now: datetime) -> Result:
    """One signed POST; redirects are not followed (a 3xx is a failure)."""
    body = json.dumps(message.body(), separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    headers = signed_headers(endpoint, message, body, now)
    default_port = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    headers["host"] = host if target.port == default_port else f"{host}:{target.port}"
    began = time.perf_counter()
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body.encode(),
            headers=headers,
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
            pool_timeout=CONNECT_TIMEOUT + READ_TIMEOUT,
        )
    except urllib3.exceptions.HTTPError as exc:
        return Result(None, _ms(began), _describe(exc), "")
    try:
        data = response.read(64 * 1024)
        if response.read(1):
            response.close()  # more than we read: not worth keeping the connection for
    except urllib3.exceptions.HTTPError as exc:
        return Result(response.status, _ms(began), _describe(exc), "")
    finally:
        # Back to the pool in every case (closed, its slot is free for a new one):
        # a pool of `width` that lost a slot per long answer would wait forever.
        response.release_conn()
    excerpt = data.decode("utf-8", "replace")[:EXCERPT_CHARS]
    status = int(response.status)
    error = "" if 200 <= status < 300 else f"answered HTTP {status}"
    if 300 <= status < 400:
        error += " (a redirect: webhooks do not follow them; use the final URL)"
    return Result(status, _ms(began), error, excerpt)


def _ms(began: float) -> int:
    return round((time.perf_counter() - began) * 1000)


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return f"could not connect within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return f"no answer within {READ_TIMEOUT:g} s"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "could not connect: " + str(exc).rsplit(":", 1)[-1].strip()
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS failed: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def retry_delay(failures: int) -> float | None:
    """Seconds until the next try after this many failures (None: no more), with
    a tenth of jitter so a receiver's backlog does not return all at once."""
    if failures > len(RETRY_SCHEDULE):
        return None
    base = RETRY_SCHEDULE[failures - 1]
    return base * random.uniform(0.9, 1.1)


def probe_delay(failures: int) -> float:
    """Seconds until an unreachable endpoint is probed, after this many failures in a row."""
    return float(min(PROBE_FIRST_SECONDS * 2 ** max(failures - 1, 0), PROBE_CAP_SECONDS))


def unreachable(result: Result) -> bool:
    return result.status_code is None or result.status_code in UNREACHABLE_STATUSES


def record(
    endpoint: Endpoint,
    outcomes: list[tuple[Delivery, Result]],
    lease: str | None,
    probe: bool = False,
) -> bool:
    """Write tries' outcomes and the endpoint's health, in one transaction;
    False if the lease was lost (or the endpoint was turned off).

    Under a lease, the endpoint's row is updated only where the lease still
    holds, which renews it; a sender that lost it writes nothing more. A
    probe that fails leaves the delivery's schedule as it was.
    """
    now = timezone.now()
    with transaction.atomic():
        endpoints = Endpoint.objects.select_for_update().filter(pk=endpoint.pk)
        if lease is not None:
            endpoints = endpoints.filter(lease=lease)
        current = endpoints.first()
        if current is None:
            return False
        back = False
        reason = None
        for delivery, result in outcomes:
            if result.succeeded or not probe:
                delivery.attempts += 1
            delivery.last_status_code = result.status_code
            delivery.last_error = result.error[:300]
            if result.succeeded:
                delivery.status, delivery.delivered_at = Status.DELIVERED, now
                back = back or (
                    current.failing_since is not None and current.failing_since <= now - BACK_AFTER
                )
                current.failing_since, current.consecutive_failures = None, 0
                current.last_success_at, current.probe_at = now, None
                continue
            if not probe:
                delay = retry_delay(delivery.attempts)
                if delay is None:
                    delivery.status = Status.FAILED
                else:
                    delivery.next_attempt_at = now + timedelta(seconds=delay)
            current.failing_since = current.failing_since or now
            current.consecutive_failures += 1
            current.probe_at = (
                now + timedelta(seconds=probe_delay(current.consecutive_failures))
                if unreachable(result)
                else None  # it answers: it is there, refusing; schedules alone apply
            )
            reason = reason or disable_reason(current, result, now)
        Attempt.objects.bulk_create(
            Attempt(
                delivery=delivery,
                endpoint=current,
                at=now,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                succeeded=result.succeeded,
                probe=probe,
                error=result.error[:300],
                response_excerpt=result.excerpt,
            )
            for delivery, result in outcomes
        )
        _save_deliveries(outcomes, now)
        if back:
            # Back from an outage: what waited for it goes now, not at its
            # next scheduled try. (Not after a short failure: one message
            # the receiver keeps refusing keeps its own back-off.)
            Delivery.objects.filter(
                endpoint=current, status=Status.PENDING, next_attempt_at__gt=now
            ).exclude(pk__in=[delivery.pk for delivery, _ in outcomes]).update(next_attempt_at=now)
        if lease is not None:
            current.leased_until = now + timedelta(seconds=LEASE_SECONDS)
        if reason:
            current.is_active, current.disabled_at, current.disabled_reason = False, now, reason
            current.lease, current.leased_until = "", None
            transaction.on_commit(lambda: tell_staff(current))
        current.save(
            update_fields=[
                "failing_since",
                "consecutive_failures",
                "probe_at",
                "last_success_at",
                "leased_until",
                "is_active",
                "disabled_at",
                "disabled_reason",
                "lease",
            ]
        )
        endpoint.__dict__.update(current.__dict__)
    return current.is_active


def _save_deliveries(outcomes: list[tuple[Delivery, Result]], now: datetime) -> None:
    """The deliveries' new state: one UPDATE for those delivered with one status
    code (nearly all of them), one per other (bulk_update's CASE per column
    and row cost more than the sends did)."""
    delivered: dict[int | None, list[int]] = {}
    for delivery, result in outcomes:
        if result.succeeded:
            delivered.setdefault(result.status_code, []).append(delivery.pk)
        else:
            delivery.save(
                update_fields=[
                    "attempts",
                    "last_status_code",
                    "last_error",
                    "status",
                    "next_attempt_at",
                ]
            )
    for status_code, pks in delivered.items():
        Delivery.objects.filter(pk__in=pks).update(
            attempts=F("attempts") + 1,
            status=Status.DELIVERED,
            delivered_at=now,
            last_status_code=status_code,
            last_error="",
        )


def disable_reason(endpoint: Endpoint, result: Result, now: datetime) -> str | None:
    if result.status_code == 410:
        return "It answered 410 Gone: the receiver says it is no longer there."
    hours = int(settings.ACCOLADE_WEBHOOK_DISABLE_AFTER_HOURS)
    if (
        endpoint.failing_since is not None
        and endpoint.failing_since <= now - timedelta(hours=hours)
        and endpoint.consecutive_failures >= DISABLE_MIN_FAILURES
    ):
        return (
            f"Every try has failed since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC "
            f"({endpoint.consecutive_failures} in a row); the last: {result.error}"
        )[:300]
    return None


def tell_staff(endpoint: Endpoint) -> None:
    logger.error(
        "Webhook endpoint %s (%s) turned off: %s",
        endpoint.pk,
        endpoint.url,
        endpoint.disabled_reason,
    )
    mail_admins(
        f"Webhook endpoint turned off: {endpoint}",
        (
            f"Accolade stopped sending to {endpoint.url}.\n\n{endpoint.disabled_reason}\n\n"
            "Its messages are kept and go out once it is enabled again "
            "(Webhooks > Webhook endpoints, action “Enable again”)."
        ),
        fail_silently=True,
    )


# --- staff's actions -------------------------------------------------------------


def send_test(endpoint: Endpoint) -> Result:
    """Send a test message to this endpoint now, outside the queue, and log it."""
    now = timezone.now()
    message = Message.objects.create(
        id=f"msg_test_{uuid.uuid4().hex}",
        kind=TEST_KIND,
        created_at=now,
        payload={"endpoint": endpoint.pk, "note": "A test message sent from the admin."},
    )
    delivery = Delivery.objects.create(message=message, endpoint=endpoint, next_attempt_at=now)
    connections = Connections(1)
    try:
        result = connections.post(endpoint, message)
    finally:
        connections.close()
    record(endpoint, [(delivery, result)], lease=None)
    if not result.succeeded and delivery.status == Status.PENDING:
        # A test is not retried.
        Delivery.objects.filter(pk=delivery.pk).update(status=Status.FAILED)
    return result


def send_again(deliveries: list[Delivery]) -> int:
    """Queue these deliveries once more, with fresh retries; ask for the sends."""
    now = timezone.now()
    for delivery in deliveries:
        delivery.send_again(now)
    kick_on_commit(sorted({d.endpoint_id for d in deliveries}))
    return len(deliveries)


def kick_on_commit(endpoint_ids: list[int]) -> None:
    transaction.on_commit(lambda: kick(endpoint_ids), robust=True)
