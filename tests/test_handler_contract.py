"""The contract between the one-hop handler (project/handlers.py) and Django.

That handler re-implements `ASGIHandler.handle` and `run_get_response` and
calls Django's private handler API. These tests pin what it leans on to the
Django it was written for, so an upgrade that changes any of it fails here,
by name, instead of misbehaving in production. When one fails: read the new
Django code, bring project/handlers.py in line (or drop it: Django's own
handler is the default), then update the pin.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from typing import Any

import django
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.test.utils import override_settings

from project.handlers import OneHopASGIHandler

WRITTEN_FOR = (5, 2)

# Each Django function the handler copies or calls, and a digest of its code
# (comments, docstrings and layout left out: the code as ast.unparse writes
# it) in the Django pinned above.
DEPENDED_ON = {
    # Re-implemented: OneHopASGIHandler.handle and _respond follow these.
    "ASGIHandler.handle": (ASGIHandler.handle, "757c338bcbdd6d35"),
    "ASGIHandler.run_get_response": (ASGIHandler.run_get_response, "ddbc5289a4f83545"),
    # Called as they are.
    "ASGIHandler.read_body": (ASGIHandler.read_body, "ac6cecd415160998"),
    "ASGIHandler.create_request": (ASGIHandler.create_request, "814617866b2baa64"),
    "ASGIHandler.send_response": (ASGIHandler.send_response, "233cf01100dc68d6"),
    "ASGIHandler.__init__": (ASGIHandler.__init__, "aba4f16ce6a10936"),
    # Builds its chain from settings.MIDDLEWARE, which the API handler swaps.
    "BaseHandler.load_middleware": (BaseHandler.load_middleware, "b8b14208f6158b23"),
}


def _code_digest(function: Any) -> str:
    return _digest_of(inspect.getsource(function))


def _digest_of(source: str) -> str:
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]


def test_django_is_the_release_the_handler_was_written_for():
    assert django.VERSION[:2] == WRITTEN_FOR, (
        f"project/handlers.py follows Django {'.'.join(map(str, WRITTEN_FOR))}'s ASGIHandler; "
        f"this is Django {django.get_version()}: re-read its handler, then update the pin"
    )


@pytest.mark.parametrize("name", DEPENDED_ON)
def test_the_django_code_the_handler_follows_is_unchanged(name):
    function, digest = DEPENDED_ON[name]
    assert _code_digest(function) == digest, (
        f"Django's {name} changed: project/handlers.py copies or calls it; "
        "re-read it, bring the handler in line, then update the digest here"
    )


def test_the_private_api_it_calls_has_the_shape_it_calls():
    signatures = {
        name: list(inspect.signature(getattr(ASGIHandler, name)).parameters)
        for name in ("read_body", "create_request", "send_response", "get_response")
    }
    assert signatures == {
        "read_body": ["self", "receive"],
        "create_request": ["self", "scope", "body_file"],
        "send_response": ["self", "response", "send"],
        "get_response": ["self", "request"],
    }
    assert inspect.iscoroutinefunction(ASGIHandler.read_body)
    assert inspect.iscoroutinefunction(ASGIHandler.send_response)
    assert not inspect.iscoroutinefunction(ASGIHandler.create_request)
    assert isinstance(ASGIHandler.chunk_size, int) and ASGIHandler.chunk_size > 0


def _view_hooks(handler: ASGIHandler) -> list[str]:
    return [type(hook.__self__).__name__ for hook in handler._view_middleware]  # type: ignore[attr-defined]


def test_load_middleware_builds_from_the_middleware_setting_of_the_moment():
    """The API's chain is built by swapping settings.MIDDLEWARE while Django's
    load_middleware runs: it must read the setting then, and only then."""
    csrf = ["django.middleware.csrf.CsrfViewMiddleware"]
    common = ["django.middleware.common.CommonMiddleware"]
    with override_settings(MIDDLEWARE=csrf):
        assert _view_hooks(ASGIHandler()) == ["CsrfViewMiddleware"]
    with override_settings(MIDDLEWARE=common):
        assert _view_hooks(ASGIHandler()) == []
    with override_settings(MIDDLEWARE=csrf):
        own = OneHopASGIHandler(threads=None, middleware=common)  # type: ignore[arg-type]
    assert _view_hooks(own) == []  # its own list, not the setting of the moment


PLAIN = """
def step(a):
    return a + 1
"""
SAID_DIFFERENTLY = """
def step(a):
    \"\"\"A docstring.\"\"\"
    # A comment, and another layout.
    return (
        a + 1
    )
"""
CHANGED = """
def step(a):
    return a + 2
"""


def test_the_digest_sees_code_and_not_comments_or_layout():
    assert _digest_of(PLAIN) == _digest_of(SAID_DIFFERENTLY)
    assert _digest_of(PLAIN) != _digest_of(CHANGED)
