from __future__ import annotations

from django.apps import AppConfig


class CredentialsConfig(AppConfig):
    name = "credentials"
    verbose_name = "Open Badges credentials"
    default_auto_field = "django.db.models.BigAutoField"
