"""The broker transport turns a released connection into a recoverable error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from achievements.broker import Channel, Transport


def test_building_a_pool_after_the_connection_is_released_is_a_connection_error():
    # The state kombu is in when it restores unacked messages after the
    # broker connection was lost and released: the channel's connection has
    # no client any more.
    released = SimpleNamespace(connection=SimpleNamespace(client=None))
    with pytest.raises(Transport.connection_errors):
        Channel._connparams(released)  # type: ignore[arg-type]


def test_the_celery_app_uses_this_transport_when_redis_is_configured():
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from project.celery import app; "
            "print(type(app.connection_for_write().transport).__module__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **__import__("os").environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SECRET_KEY": "x",
            "REDIS_URL": "redis://127.0.0.1:6379",
        },
    )
    assert result.stdout.strip() == "achievements.broker", result.stderr
