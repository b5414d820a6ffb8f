"""Celery tasks of the webhooks: thin, on a queue of their own (ACCOLADE_WEBHOOK_QUEUE)."""

from __future__ import annotations

from celery import shared_task

from webhooks import sending


@shared_task(
    name="webhooks.send_endpoint",
    ignore_result=True,
    # Not acknowledged late: a task lost with its worker is not the recovery
    # (the broker would hand it back an hour later, its lease long gone).
    acks_late=False,
    soft_time_limit=60,
    time_limit=90,
)
def send_endpoint_task(endpoint_id: int, lease: str) -> None:
    """Send one endpoint's due messages; its lease makes this the only sender.

    A task that dies leaves the lease to run out (webhooks.sending.LEASE_SECONDS),
    and the next sweep hands the endpoint to another sender; a delivery that
    was sent but not yet recorded is sent again, under the same webhook-id.
    """
    sending.send_endpoint(endpoint_id, lease)


@shared_task(name="webhooks.send_due", ignore_result=True)
def send_due_task() -> None:
    """The sweep: retries that are due, and endpoints whose hand-over was lost."""
    sending.send_due()
