from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from accounts.lockout import on_logged_in

        user_logged_in.connect(on_logged_in, dispatch_uid="accounts.known-browser")
