"""Daphne's HTTP requests without Twisted work nobody reads: form parsing, dropped log lines."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

Method = Callable[..., Any]


def skip_form_parsing() -> bool:
    """Make Daphne's requests leave their POST bodies to the application; whether it could.

    Twisted parses a POST's form body into `request.args`, which Daphne
    never reads (it hands the raw body to Django); the cost:
    docs/performance.md, "Twisted's form parsing and access log". Twisted's
    `parsePOSTFormSubmission` switch turns the parsing off; Daphne has no
    option for it, so its request class gets it here.
    """

    def build(original: Method) -> Method:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parsePOSTFormSubmission", False)
            original(self, *args, **kwargs)

        return __init__

    return _replace_once("WebRequest", "__init__", "skips_form_parsing", build)


def skip_discarded_access_log() -> bool:
    """Make Daphne's HTTP factory skip Twisted's access-log line when Twisted's
    log goes nowhere; whether it could.

    At verbosity 0 or 1 (the default) Daphne sends Twisted's log nowhere, so
    its per-request line was built to be dropped (the cost: the same section
    of docs/performance.md). At verbosity 2 and up it is written as before.
    """

    def build(original: Method) -> Method:
        def log(self: Any, request: Any) -> None:
            # daphne.server.Server discards Twisted's log at verbosity <= 1.
            if self.server.verbosity > 1:
                original(self, request)

        return log

    return _replace_once("HTTPFactory", "log", "skips_discarded_lines", build)


def _replace_once(
    class_name: str, method: str, marker: str, build: Callable[[Method], Method]
) -> bool:
    """Put build(original) in place of daphne.http_protocol's `class_name.method`,
    marked with `marker` so a second call leaves it; whether Daphne is there."""
    try:
        from daphne import http_protocol
    except ImportError:  # another ASGI server
        return False
    owner = getattr(http_protocol, class_name)
    original = getattr(owner, method)
    if getattr(original, marker, False):
        return True
    replacement = wraps(original)(build(original))
    setattr(replacement, marker, True)
    setattr(owner, method, replacement)
    return True
