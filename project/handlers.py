"""The opt-in HTTP application (WEB_HTTP_HANDLER = "one-hop"): each request in one
trip to a thread kept between requests, and the API under a middleware chain of its own.

Django's own ASGIHandler is the default. This one re-implements its `handle`
on Django's private handler API (`read_body`, `create_request`,
`send_response`, `chunk_size`, `load_middleware` reading
`settings.MIDDLEWARE`); tests/test_handler_contract.py pins that API to the
Django it was written for and fails when an upgrade changes it. What it
saves: docs/performance.md, "Django's handler or the one-hop one".
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpResponseBase
from django.test.utils import override_settings
from django.urls import set_script_prefix

logger = logging.getLogger(__name__)


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, with each request's middleware chain and view run in
    one call on a thread leased from `RequestThreads`.

    Django's handler builds an async chain around sync-only middleware, so a
    request crosses between the event loop and a thread about a dozen times;
    this one crosses once, as Django's WSGI handler runs the chain.
    """

    def __init__(self, threads: RequestThreads, middleware: list[str] | None = None) -> None:
        # Set before Django's __init__, which loads the middleware.
        self.middleware = middleware
        super().__init__()
        self.threads = threads

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = await self.threads.lease()
        try:
            # Every thread-sensitive call of this request (the request_started
            # and request_finished receivers, the middleware chain and view)
            # runs on the leased thread, as on Django's per-request one.
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)

    def load_middleware(self, is_async: bool = False) -> None:
        if self.middleware is None:
            super().load_middleware(is_async=False)
            return
        # Django builds the chain from settings.MIDDLEWARE; this handler's list
        # stands in for it while the chain is built. The swap is process-wide
        # (and sends setting_changed, which nothing here reacts to for
        # MIDDLEWARE), so it happens once, while the module is imported,
        # before any request or other thread runs.
        with override_settings(MIDDLEWARE=self.middleware):
            super().load_middleware(is_async=False)

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        """Django's `handle`, with the request's synchronous part in one trip to its thread.

        Django's goes to the thread three times (the request_started
        receivers, the middleware chain and view, then the response's close
        and the request_finished receivers) and races the view against a
        disconnect listener; here the three run in one call, in that order
        (the cost saved: docs/performance.md, "One thread hop per request").
        A response held in memory is closed (request_finished: the database
        connection goes back to the pool) before it is sent; a streaming one
        after, as before. The response is prepared as Django's
        `run_get_response` prepares it.

        A client that leaves mid-view is not listened for: a sync view runs
        to its end either way, and Daphne cancels the request once the
        client has been gone for its application close timeout.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            response = await sync_to_async(self._respond, thread_sensitive=True)(scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:
                    await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    def _respond(self, scope: Any, body_file: Any) -> HttpResponseBase:
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, refusal = self.create_request(scope, body_file)
        # create_request gives a request, or the response refusing one (a 400, 413).
        response = self.get_response(request) if request is not None else refusal
        assert response is not None
        # As Django's run_get_response: request_finished names this handler,
        # and a file goes out in chunks of the server's size, not 4 KB.
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if not response.streaming:
            try:
                response.close()
            except Exception:
                # Django closes after sending, so a failing request_finished
                # receiver could not change the answer; nor does it here.
                logger.exception("Closing the response failed")
        return response


class HttpHandlers:
    """The web process's HTTP application: API requests through a middleware
    chain of their own, the rest through the site's.

    Requests whose path (below the script prefix) starts with
    settings.API_PREFIX go to a handler built from settings.API_MIDDLEWARE;
    the others to one built from settings.MIDDLEWARE. Both lease threads from
    one `RequestThreads`, so WEB_REQUEST_THREADS bounds them together.
    """

    def __init__(self) -> None:
        prefix = settings.API_PREFIX
        if not (len(prefix) > 1 and prefix.startswith("/") and prefix.endswith("/")):
            # "" or "/" would send every page through the API's chain, without
            # sessions or CSRF; "/api" would match "/apiary".
            raise ImproperlyConfigured(
                f"API_PREFIX must be a path below the root that starts and ends with '/', "
                f"such as '/api/' (got {prefix!r})"
            )
        self.prefix = prefix  # the one checked is the one used
        self.threads = RequestThreads(limit=settings.WEB_REQUEST_THREADS)
        self.site = OneHopASGIHandler(self.threads)
        self.api = OneHopASGIHandler(self.threads, middleware=settings.API_MIDDLEWARE)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handler_for(scope)(scope, receive, send)

    def handler_for(self, scope: Any) -> OneHopASGIHandler:
        # As Django's ASGIRequest finds path_info.
        path = scope.get("path", "").removeprefix(get_script_prefix(scope))
        return self.api if path.startswith(self.prefix) else self.site


class _RequestThread(ThreadPoolExecutor):
    """One thread, which knows whether it still has work queued or running."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        # Every call not finished yet. Not just the last one: a call cancelled
        # while queued is done, though the view ahead of it may still run.
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._finished)  # in the worker, or here if already done
        return future

    def _finished(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending)


class RequestThreads:
    """Threads that serve one request at a time each, kept between requests,
    and at most `limit` requests at once (the rest wait on the event loop, as
    in a WSGI server's fixed pool). WebSockets take no lease.

    A thread goes back to the idle stack only when nothing of its request is
    left in it: a request abandoned on a client disconnect can leave its view
    still running, and the next request must not queue behind it; such a
    thread finishes its work and exits. Leases and returns happen on the
    event loop's thread, so they need no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._idle: list[_RequestThread] = []
        self._leased = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def lease(self) -> _RequestThread:
        if self._leased < self.limit and not self._waiting:
            self._leased += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter  # a returning lease's place passes to it
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on()  # handed a place while being cancelled
                raise
        # The most recently used first: its caches and stack are warm.
        return self._idle.pop() if self._idle else _RequestThread()

    def give_back(self, thread: _RequestThread) -> None:
        # At most `limit` threads are out at once, so the idle stack needs no cap.
        if not thread.busy:
            self._idle.append(thread)
        else:
            thread.shutdown(wait=False)
        self._pass_on()

    def _pass_on(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # not cancelled while it waited
                waiter.set_result(None)
                return
        self._leased -= 1

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiting if not waiter.done())
