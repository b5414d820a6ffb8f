"""Daphne's HTTP requests, without Twisted's form parsing that nothing reads."""

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
