"""Celery task of the analytics feed: the exporter, run by beat."""

from __future__ import annotations

from celery import shared_task

from feed import export


@shared_task(name="feed.export", ignore_result=True, soft_time_limit=600, time_limit=660)
def export_task() -> None:
    """Write the waiting records into files (one export at a time)."""
    export.export_due()
