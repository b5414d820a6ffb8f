"""Configuration from the environment: good values work, bad ones stop start-up clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from project import env


def test_redis_url_gives_one_database_per_role(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@cache.internal:6380/7")
    assert env.redis_urls("REDIS_URL") == {
        "broker": "redis://:secret@cache.internal:6380/0",
        "cache": "redis://:secret@cache.internal:6380/1",
        "channels": "redis://:secret@cache.internal:6380/2",
    }


def test_an_unset_redis_url_means_the_embedded_mode(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert env.redis_urls("REDIS_URL") is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        (
            "REDIS_URL",
            "http://localhost:6379",
            "REDIS_URL='http://localhost:6379' has scheme 'http'",
        ),
        (
            "REDIS_URL",
            "redis://:hunter2@localhost:notaport",
            "REDIS_URL='redis://:***@localhost:notaport' has an invalid port",
        ),
        ("DATABASE_URL", "mysql://db/x", "DATABASE_URL='mysql://db/x' has scheme 'mysql'"),
        ("DATABASE_URL", "postgres://localhost", "names no database"),
        ("ALLOWED_HOSTS", " , ", "ALLOWED_HOSTS is set but lists nothing"),
        ("ACCOLADE_NAMESPACE", "has space", "ACCOLADE_NAMESPACE='has space' must be"),
        ("WEB_GC_THRESHOLDS", "5000,10", "WEB_GC_THRESHOLDS='5000,10' must be 3 whole numbers"),
        ("WEB_GC_THRESHOLDS", "5000,ten,9", "must be 3 whole numbers, like 5000,10,100"),
        ("WEB_GC_THRESHOLDS", "0,10,10", "every number must be at least 1"),
        ("WEB_HTTP_HANDLER", "onehop", "WEB_HTTP_HANDLER='onehop' must be one of DJANGO, ONE-HOP"),
        ("TRUSTED_PROXIES", "10.0.0.1,proxy.local", "'proxy.local' is not an IP address"),
        ("TRUSTED_PROXIES", "*", "trusting every address is not offered"),
        ("TRUSTED_PROXIES", "10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    readers = {
        "DEBUG": lambda: env.env_bool("DEBUG", False),
        "REDIS_URL": lambda: env.redis_urls("REDIS_URL"),
        "DATABASE_URL": lambda: env.database_config("DATABASE_URL", "sqlite:///x"),
        "ALLOWED_HOSTS": lambda: env.env_list("ALLOWED_HOSTS", []),
        "ACCOLADE_NAMESPACE": lambda: env.env_identifier("ACCOLADE_NAMESPACE", "accolade"),
        "WEB_GC_THRESHOLDS": lambda: env.env_ints("WEB_GC_THRESHOLDS", (5000, 10, 100), minimum=1),
        "WEB_HTTP_HANDLER": lambda: env.env_choice(
            "WEB_HTTP_HANDLER", "django", ["DJANGO", "ONE-HOP"]
        ),
        "TRUSTED_PROXIES": lambda: env.env_networks("TRUSTED_PROXIES"),
    }
    with pytest.raises(ImproperlyConfigured) as raised:
        readers[name]()
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


def _check(**overrides: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
    }
    environment.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_start_up_refuses_a_missing_secret_key_outside_debug():
    result = _check()
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_start_up_names_a_bad_variable():
    result = _check(DEBUG="1", REDIS_URL="localhost:6379")
    assert result.returncode != 0
    assert "REDIS_URL='localhost:6379' has scheme" in result.stderr


def test_start_up_succeeds_with_good_values():
    result = _check(
        DEBUG="0",
        SECRET_KEY="x" * 50,
        REDIS_URL="redis://127.0.0.1:6379",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
    )
    assert result.returncode == 0, result.stderr


def test_trusted_proxies_are_none_unless_named(monkeypatch):
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    assert env.env_networks("TRUSTED_PROXIES") == []
    monkeypatch.setenv("TRUSTED_PROXIES", " 127.0.0.1, 10.0.0.0/8 ,::1")
    assert env.env_networks("TRUSTED_PROXIES") == ["127.0.0.1", "10.0.0.0/8", "::1"]
    # Host bits are dropped, as the proxy middleware would otherwise never match it.
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.1/8")
    assert env.env_networks("TRUSTED_PROXIES") == ["10.0.0.0/8"]


def test_production_settings_pass_the_deploy_checks():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("SECURE_", "DEBUG", "DJANGO_SETTINGS", "REDIS_URL"))
            },
            "SECRET_KEY": "k3Y-" + "x9Zq7!" * 10,
            "ALLOWED_HOSTS": "badges.example.com",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_is_off_unless_asked_for():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); "
            "from django.conf import settings as s; print(s.DEBUG, s.SECURE_SSL_REDIRECT)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("SECURE_", "DEBUG", "DJANGO_SETTINGS"))
            },
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SECRET_KEY": "x" * 50,
        },
    )
    assert result.stdout.split() == ["False", "True"], result.stderr


@pytest.mark.parametrize(
    ("value", "threshold"), [(None, "2147483647"), ("1", "2147483647"), ("0", "None")]
)
def test_postgresql_gets_this_backend_and_prepared_statements_unless_turned_off(value, threshold):
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "DJANGO_SETTINGS_MODULE", "DATABASE_PREPARED_STATEMENTS"}
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        SECRET_KEY="x" * 50,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
    )
    if value is not None:
        environment["DATABASE_PREPARED_STATEMENTS"] = value
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "d = s.DATABASES['default']; "
            "print(d['ENGINE'], d['CONN_HEALTH_CHECKS'], d['OPTIONS']['prepare_threshold'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert result.stdout.split() == ["project.postgresql", "False", threshold], result.stderr


def test_pages_carry_a_content_security_policy_allowing_only_our_scripts(client, db):
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in policy


def test_with_trusted_proxies_django_does_not_read_x_forwarded_proto_itself():
    code = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEBUG", "DJANGO_SETTINGS", "TRUSTED_PROXIES"))
    }
    base.update(SECRET_KEY="k" * 50, DJANGO_SETTINGS_MODULE="project.settings")
    outputs = [
        subprocess.run(
            [sys.executable, "-c", "import django; django.setup(); " + code],
            capture_output=True,
            text=True,
            timeout=60,
            env={**base, **extra},
        ).stdout.strip()
        for extra in ({}, {"TRUSTED_PROXIES": "127.0.0.1"})
    ]
    assert outputs == ["('HTTP_X_FORWARDED_PROTO', 'https')", "None"]
