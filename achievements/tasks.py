"""Celery tasks: a thin interface that takes keys, calls the engine, owns retries."""

from __future__ import annotations

from celery import shared_task
from django.db import DatabaseError

from achievements import actions


@shared_task(
    name="achievements.evaluate_event",
    acks_late=True,
    ignore_result=True,
    # Lock waits, deadlock victims and dropped connections are worth another
    # try; the claim in evaluate_event makes a retry of a committed event a no-op.
    autoretry_for=(DatabaseError,),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def evaluate_event_task(event_pk: int) -> None:
    actions.evaluate_event(event_pk)
