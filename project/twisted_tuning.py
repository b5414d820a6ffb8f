"""Daphne's HTTP requests without Twisted work nobody reads: form parsing, dropped log lines."""

from __future__ import annotations

from functools import wraps
from typing import Any


def skip_form_parsing() -> bool:
    """Make Daphne's requests leave their POST bodies to the application; whether it could.

    Twisted parses a POST's form body into `request.args` when its
    Content-Type says urlencoded or multipart, and to know that it sends
    every POST's Content-Type through the `email` package: 5 % of a web
    process's CPU under single-event API requests (py-spy). Daphne never
    reads `args`; it hands the raw body to Django, which parses forms
    itself. Twisted's `parsePOSTFormSubmission` switch turns the parsing
    off; Daphne has no option for it, so its request class gets it here.
    """
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # another ASGI server
        return False
    if getattr(WebRequest.__init__, "skips_form_parsing", False):
        return True
    original = WebRequest.__init__

    @wraps(original)
    def __init__(self: WebRequest, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original(self, *args, **kwargs)

    __init__.skips_form_parsing = True  # type: ignore[attr-defined]
    WebRequest.__init__ = __init__  # type: ignore[method-assign]
    return True


def skip_discarded_access_log() -> bool:
    """Make Daphne's HTTP factory skip Twisted's access-log line when Twisted's
    log goes nowhere; whether it could.

    Twisted formats a combined-log line for every request and writes it to
    its own log. At verbosity 0 or 1 (the default) Daphne sends that log
    nowhere, and writes an access log of its own: the line was built to be
    dropped, 1.6 % of a web process's CPU under single-event API requests
    (py-spy). At verbosity 2 and up Daphne passes Twisted's log to Python's
    logging, and the line is written as before.
    """
    try:
        from daphne.http_protocol import HTTPFactory
    except ImportError:  # another ASGI server
        return False
    if getattr(HTTPFactory.log, "skips_discarded_lines", False):
        return True
    original = HTTPFactory.log

    @wraps(original)
    def log(self: HTTPFactory, request: Any) -> None:
        # daphne.server.Server discards Twisted's log at verbosity <= 1.
        if self.server.verbosity > 1:
            original(self, request)

    log.skips_discarded_lines = True  # type: ignore[attr-defined]
    HTTPFactory.log = log  # type: ignore[method-assign]
    return True
