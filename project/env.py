"""Typed readers for settings that come from environment variables.

Each reader fails at start-up with ImproperlyConfigured naming the variable and
what is wrong with it, so a typo in a deployment never turns into a confusing
error deep inside a request.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off."
    )


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise ImproperlyConfigured(f"{name} is set but lists nothing; unset it or give values.")
    return items


def env_addresses(name: str) -> list[tuple[str, str]]:
    """Comma-separated email addresses, with or without names ("Ops <ops@example.com>"),
    as (name, address) pairs; none when unset. A malformed one is an error at start-up."""
    raw = os.environ.get(name, "")
    pairs = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        display, address = email.utils.parseaddr(item)
        if "@" not in address or " " in address:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an email address (like Ops <ops@example.com>)."
            )
        pairs.append((display or address, address))
    return pairs


def env_networks(name: str) -> list[str]:
    """Comma-separated IP addresses or networks ("10.0.0.0/8"); none when unset.

    Each is checked here, so a typo is an error at start-up rather than a
    proxy silently not trusted (or everything trusted).
    """
    raw = os.environ.get(name, "")
    items = [item.strip() for item in raw.split(",") if item.strip()]
    networks = []
    for item in items:
        try:
            # Written as the proxy middleware compares them: 10.0.0.1/8 is 10.0.0.0/8.
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an IP address or network (like 10.0.0.0/8); "
                "trusting every address is not offered: name the proxies."
            ) from None
        networks.append(item if "/" not in item else str(network))
    return networks


def env_ints(name: str, default: tuple[int, ...], *, minimum: int = 0) -> tuple[int, ...]:
    """As many comma-separated whole numbers as the default has, e.g. 5000,10,100."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        values = tuple(int(part) for part in raw.split(","))  # int() ignores spaces
    except ValueError:
        values = ()
    if len(values) != len(default):
        example = ",".join(map(str, default))
        raise ImproperlyConfigured(
            f"{name}={raw!r} must be {len(default)} whole numbers, like {example}."
        )
    if min(values) < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: every number must be at least {minimum}.")
    return values


def env_choice(name: str, default: str, choices: list[str]) -> str:
    """One of a fixed set of values, matched case-insensitively."""
    given = env_str(name, default) or default
    value = given.upper()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={given!r} must be one of {', '.join(choices)}.")
    return value


def env_rate(name: str, default: str) -> tuple[int, int]:
    """A rate written REQUESTS/SECONDS, e.g. 1200/60."""
    raw = env_str(name, default) or default
    count, _, period = raw.partition("/")
    try:
        parsed = int(count), int(period)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} must look like 1200/60.") from None
    if parsed[0] < 1 or parsed[1] < 1:
        raise ImproperlyConfigured(f"{name}={raw!r}: both numbers must be at least 1.")
    return parsed


def env_identifier(name: str, default: str) -> str:
    """A short name safe to use in queue names, cache prefixes and group names."""
    value = env_str(name, default) or ""
    if not value or len(value) > 40 or not all(c.isalnum() or c in "-_" for c in value):
        raise ImproperlyConfigured(
            f"{name}={value!r} must be 1-40 characters of letters, digits, '-' or '_'."
        )
    return value


def database_config(name: str, default: str) -> dict[str, object]:
    """Parse a database URL (postgres://, postgresql://, sqlite:///) into DATABASES['default']."""
    import dj_database_url

    url = env_str(name, default) or default
    scheme = urlsplit(url).scheme
    if scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise ImproperlyConfigured(
            f"{name}={_redact(url)!r} has scheme {scheme!r}; "
            "use postgres://USER@HOST:PORT/NAME or sqlite:///PATH."
        )
    try:
        config: dict[str, object] = dict(dj_database_url.parse(url, conn_max_age=0))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={_redact(url)!r} cannot be parsed: {exc}") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"{name}={_redact(url)!r} names no database.")
    return config


def redis_urls(name: str) -> dict[str, str] | None:
    """Split REDIS_URL into one URL per role: DB 0 broker, DB 1 cache, DB 2 channel layer.

    One logical database per role means flushing the cache never drops queued
    tasks or channel-layer messages. Any database number in the URL is ignored
    for that reason; the roles pick their own.
    """
    url = env_str(name)
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ImproperlyConfigured(
            f"{name}={_redact(url)!r} has scheme {parts.scheme!r}; use redis://HOST:PORT."
        )
    if not parts.hostname:
        raise ImproperlyConfigured(f"{name}={_redact(url)!r} names no host.")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ImproperlyConfigured(f"{name}={_redact(url)!r} has an invalid port.") from None

    def with_db(db: int) -> str:
        return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))

    return {"broker": with_db(0), "cache": with_db(1), "channels": with_db(2)}


def _redact(url: str) -> str:
    """Hide a password in a URL before it goes into an error message."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url
