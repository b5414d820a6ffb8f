from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from achievements import dispatch
        from achievements.models.ledger import ledger_written
        from webhooks import outbox, sending, tasks  # noqa: F401  (tasks: registered)

        ledger_written.connect(outbox.write_messages, dispatch_uid="webhooks.outbox")
        # Celery beat sends the retries elsewhere; the embedded sweeper here.
        dispatch.run_with_embedded_sweeper(sending.send_due)
