"""Settings for the test suite: the real settings with test-only defaults."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
# The test client speaks plain HTTP; production's TLS-only defaults are
# covered by tests/test_settings.py through `check --deploy`.
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("SECURE_COOKIES", "0")
os.environ.setdefault("SECURE_HSTS_SECONDS", "0")
# The suite runs embedded unless a test starts the real topology itself; a
# REDIS_URL in the developer's shell must not leak into unit tests.
os.environ.pop("REDIS_URL", None)

from project.settings import *  # noqa: E402,F403

# Hashing passwords slowly is the point in production and a waste in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
# Tests that need evaluation call it directly or run it on commit, synchronously.
ACCOLADE_TASK_MODE = "sync"
