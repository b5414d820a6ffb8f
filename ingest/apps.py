from __future__ import annotations

from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "ingest"
    verbose_name = "Event stream"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from achievements import metrics
        from ingest import pipeline

        metrics.add_gauges(pipeline.lag_gauges)
