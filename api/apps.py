from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Event API"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from api.auth import forget
        from api.models import ApiKey

        post_save.connect(forget, sender=ApiKey, dispatch_uid="api-key-forget-on-save")
        post_delete.connect(forget, sender=ApiKey, dispatch_uid="api-key-forget-on-delete")
