from __future__ import annotations

from django.apps import AppConfig


class FeedConfig(AppConfig):
    name = "feed"
    verbose_name = "Analytics feed"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from achievements import dispatch, metrics
        from feed import export, outbox, tasks  # noqa: F401  (tasks: registered)

        if not settings.ACCOLADE_FEED:
            return  # nothing listens: the engine does not even gather decisions
        outbox.connect()
        metrics.add_gauges(export.gauges)
        # Celery beat exports elsewhere; the embedded sweeper here.
        dispatch.run_with_embedded_sweeper(export.export_due)
