"""The one-hop HTTP handler (WEB_HTTP_HANDLER = "one-hop"): one thread per request,
leased, not started anew; the API under its own middleware chain."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.signals import request_finished, request_started

from project.handlers import HttpHandlers, OneHopASGIHandler, RequestThreads
from tests.http_exchange import exchange, http_scope


@functools.cache
def handlers() -> HttpHandlers:
    """One set of handlers for the module, as a web process builds one."""
    return HttpHandlers()


async def _get(path: str) -> int:
    """Send one GET through the real ASGI handler; its status."""
    return int((await _exchange(path))[0]["status"])


def _scope(path: str, root_path: str = "") -> dict[str, Any]:
    return http_scope(path, root_path=root_path)


async def _exchange(path: str) -> list[dict]:
    """Send one GET through the one-hop handlers; the messages they send back."""
    return await exchange(handlers(), _scope(path))


@pytest.fixture
def request_threads(monkeypatch):
    """Where each request's start and finish signals and its view ran."""
    seen: list[tuple[str, threading.Thread]] = []  # the objects: an ident can be reused
    loop_thread = threading.current_thread()

    def record(name):
        def receiver(**_kwargs):
            seen.append((name, threading.current_thread()))

        return receiver

    started, finished = record("started"), record("finished")
    request_started.connect(started)
    request_finished.connect(finished)
    for handler in (handlers().site, handlers().api):

        def view(request, original=handler.get_response):
            seen.append(("view", threading.current_thread()))
            return original(request)

        monkeypatch.setattr(handler, "get_response", view)
    yield seen, loop_thread
    request_started.disconnect(started)
    request_finished.disconnect(finished)


async def test_a_request_runs_its_signals_and_view_on_one_thread_off_the_loop(request_threads):
    seen, loop_thread = request_threads

    # A POST-only endpoint: the 405 needs neither the database nor Redis.
    assert await _get("/api/v1/events") == 405

    assert [name for name, _ in seen] == ["started", "view", "finished"]
    threads = {thread for _, thread in seen}
    assert len(threads) == 1
    assert loop_thread not in threads


# WhiteNoise's file responses iterate synchronously; Django warns under ASGI, as in production.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_a_request_goes_to_its_thread_once_and_is_finished_before_it_is_sent(
    request_threads, monkeypatch
):
    """Signals, view and close in one call; a streamed response (a static file)
    is closed after its body is sent, in a call of its own."""
    from project.handlers import _RequestThread

    seen, _ = request_threads
    calls = []
    submit = _RequestThread.submit

    def counted(self, fn, /, *args, **kwargs):
        calls.append(fn)
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(_RequestThread, "submit", counted)
    assert await _get("/api/v1/events") == 405
    assert len(calls) == 1
    assert [name for name, _ in seen] == ["started", "view", "finished"]

    calls.clear()
    seen.clear()
    start, *body = await _exchange("/static/css/app.css")  # about 12 KB
    assert start["status"] == 200
    assert len(calls) == 3  # the response, the file's body, then its close
    assert "close" in repr(calls[-1])
    assert [name for name, _ in seen] == ["started", "view", "finished"]
    # In one piece, as from Django's handler, not in 4 KB ones.
    size = (Path(__file__).resolve().parents[1] / "static" / "css" / "app.css").stat().st_size
    assert [len(part) for message in body if (part := message.get("body"))] == [size]


async def test_request_finished_names_the_handler():
    senders: list[object] = []

    def receiver(sender, **_kwargs):
        senders.append(sender)

    request_finished.connect(receiver)
    try:
        assert await _get("/api/v1/events") == 405
    finally:
        request_finished.disconnect(receiver)
    assert senders == [OneHopASGIHandler]


async def test_api_requests_go_through_the_api_middleware_only(monkeypatch):
    """Under API_PREFIX the chain is settings.API_MIDDLEWARE: the security
    headers, but no session, CSRF, user, messages, frame or htmx middleware."""
    from django.contrib.auth.middleware import AuthenticationMiddleware
    from django.contrib.messages.middleware import MessageMiddleware
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.middleware.clickjacking import XFrameOptionsMiddleware
    from django.middleware.csrf import CsrfViewMiddleware
    from django_htmx.middleware import HtmxMiddleware

    ran: list[str] = []
    for middleware, method in [
        (SessionMiddleware, "process_request"),
        (CsrfViewMiddleware, "process_request"),
        (AuthenticationMiddleware, "process_request"),
        (MessageMiddleware, "process_request"),
        (XFrameOptionsMiddleware, "process_response"),
        (HtmxMiddleware, "__call__"),
    ]:

        def spy(self, *args, original=middleware.__dict__[method], name=middleware.__name__):
            ran.append(name)
            return original(self, *args)

        monkeypatch.setattr(middleware, method, spy)

    api = dict((await _exchange("/api/v1/events"))[0]["headers"])
    assert ran == []
    site = dict((await _exchange("/no-such-page"))[0]["headers"])
    assert set(ran) == {  # CSRF's twice: the 404 view ensures a token too
        "AuthenticationMiddleware",
        "CsrfViewMiddleware",
        "HtmxMiddleware",
        "MessageMiddleware",
        "SessionMiddleware",
        "XFrameOptionsMiddleware",
    }

    for headers in (api, site):
        assert headers[b"X-Content-Type-Options"] == b"nosniff"
        assert b"default-src 'self'" in headers[b"Content-Security-Policy"]
    assert b"X-Frame-Options" not in api  # the policy's frame-ancestors covers a JSON answer
    assert site[b"X-Frame-Options"] == b"DENY"


@pytest.mark.parametrize(
    ("path", "root_path", "force_script_name", "handler"),
    [
        ("/api/v1/events", "", None, "api"),
        ("/api/", "", None, "api"),
        ("/apiary/", "", None, "site"),
        ("/places/", "", None, "site"),
        ("/accolade/api/v1/events", "/accolade", None, "api"),  # mounted below a prefix
        ("/accolade/places/", "/accolade", None, "site"),
        ("/api/v1/events", "/api", None, "site"),  # the path below "/api" is "/v1/events"
        ("/mount/api/v1/events", "", "/mount", "api"),
    ],
)
def test_the_handler_is_chosen_by_the_path_below_the_script_prefix(
    settings, path, root_path, force_script_name, handler
):
    settings.FORCE_SCRIPT_NAME = force_script_name
    chosen = handlers().handler_for(_scope(path, root_path))
    assert chosen is getattr(handlers(), handler)


@pytest.mark.parametrize("prefix", ["", "/", "/api", "api/"])
def test_an_api_prefix_that_would_catch_other_paths_is_refused(settings, prefix):
    from django.core.exceptions import ImproperlyConfigured

    settings.API_PREFIX = prefix
    with pytest.raises(ImproperlyConfigured, match="API_PREFIX must be"):
        HttpHandlers()


def test_building_the_api_chain_leaves_the_site_settings_alone():
    from django.conf import settings

    assert "django.contrib.sessions.middleware.SessionMiddleware" in settings.MIDDLEWARE
    # Each chain as built: only the site's has CSRF's view check.
    view_checks = {
        name: [type(hook.__self__).__name__ for hook in handler._view_middleware]  # type: ignore[attr-defined]
        for name, handler in (("site", handlers().site), ("api", handlers().api))
    }
    assert view_checks == {"site": ["CsrfViewMiddleware"], "api": []}
    assert handlers().site.threads is handlers().api.threads  # one limit for both


async def test_the_next_request_reuses_the_thread_instead_of_starting_one(request_threads):
    seen, _ = request_threads

    for _ in range(3):
        assert await _get("/api/v1/events") == 405

    assert len({thread for _, thread in seen}) == 1
    assert handlers().threads.idle >= 1


async def test_concurrent_leases_get_threads_of_their_own():
    threads = RequestThreads(limit=4)
    first, second = await threads.lease(), await threads.lease()
    try:
        assert first is not second
        idents = {executor.submit(threading.get_ident).result() for executor in (first, second)}
        assert len(idents) == 2
    finally:
        threads.give_back(first)
        threads.give_back(second)
    assert threads.idle == 2


async def test_a_request_beyond_the_limit_waits_for_a_lease_to_come_back():
    threads = RequestThreads(limit=2)
    first, second = await threads.lease(), await threads.lease()
    third = asyncio.create_task(threads.lease())
    await asyncio.sleep(0.01)
    assert not third.done() and threads.waiting == 1

    threads.give_back(first)

    assert await asyncio.wait_for(third, 5) is first  # the idle thread, reused
    fourth = asyncio.create_task(threads.lease())
    await asyncio.sleep(0.01)
    assert not fourth.done()  # still two out
    threads.give_back(second)
    await asyncio.wait_for(fourth, 5)


async def _one_place_held_and_two_waiting():
    threads = RequestThreads(limit=1)
    held = await threads.lease()
    first, second = (asyncio.create_task(threads.lease()) for _ in range(2))
    await asyncio.sleep(0.01)
    return threads, held, first, second


async def test_a_waiter_cancelled_before_its_turn_takes_no_place():
    threads, held, gone, next_in_line = await _one_place_held_and_two_waiting()
    gone.cancel()
    await asyncio.sleep(0.01)

    threads.give_back(held)

    assert await asyncio.wait_for(next_in_line, 5) is held
    assert gone.cancelled()


async def test_a_waiter_cancelled_as_its_place_arrives_passes_the_place_on():
    threads, held, unlucky, after = await _one_place_held_and_two_waiting()

    threads.give_back(held)  # the place goes to `unlucky`...
    unlucky.cancel()  # ...which is cancelled before it runs

    await asyncio.wait_for(after, 5)
    assert unlucky.cancelled()
    threads.give_back(after.result())
    # One place, and it is free again.
    again = await asyncio.wait_for(threads.lease(), 5)
    threads.give_back(again)


@pytest.mark.parametrize("later_call_cancelled", [False, True])
async def test_a_thread_still_running_an_abandoned_request_is_not_leased_again(
    later_call_cancelled,
):
    threads = RequestThreads(limit=4)
    thread = await threads.lease()
    release = threading.Event()
    # A view still running after its client went away and the request was cancelled.
    view = thread.submit(release.wait, 10)
    if later_call_cancelled:
        # Django's request_finished call queued behind the view, then cancelled
        # with the request by Daphne: done, though the view is not.
        thread.submit(int).cancel()

    threads.give_back(thread)

    assert threads.idle == 0
    assert await threads.lease() is not thread
    release.set()
    assert view.result(timeout=10) is True


async def test_a_failing_request_finished_receiver_does_not_change_the_answer(caplog):
    """Django sends request_finished after the response; here it comes first,
    so a receiver's error is logged instead of turning the answer into a 500."""

    def broken(**_kwargs):
        raise RuntimeError("a receiver's bug")

    request_finished.connect(broken)
    try:
        assert await _get("/api/v1/events") == 405
    finally:
        request_finished.disconnect(broken)
    assert "Closing the response failed" in caplog.text
