"""ASGI entry point: HTTP goes to Django, WebSockets to the Channels router."""

from __future__ import annotations

import os

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, with each request's middleware chain and view run in one thread.

    Every view here is synchronous, and some middleware (WhiteNoise, the
    security-header middleware) is sync-only. Django's own handler builds
    an async chain around them, so one request crossed between the event
    loop and a thread about a dozen times (twice per MiddlewareMixin
    middleware, once more for the view). Under load each crossing waits for
    the GIL: 32 concurrent API clients got fewer requests through than one.
    Running the chain as Django's WSGI handler does, in a single
    sync_to_async call per request, crosses once. A thread per request
    still (ThreadSensitiveContext), so requests overlap while they wait on
    the database.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase = await sync_to_async(self.get_response, thread_sensitive=True)(
            request
        )
        return response


# Django must be set up before anything imports models, consumers included.
django.setup(set_prefix=False)
django_asgi_app = OneHopASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from achievements.routing import websocket_urlpatterns  # noqa: E402
from achievements.socket_auth import SessionUserMiddleware  # noqa: E402
from project.gc_tuning import tune_for_server  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            SessionUserMiddleware(URLRouter(websocket_urlpatterns))
        ),
    }
)

# Last, so everything loading the application built is frozen.
tune_for_server(settings.WEB_GC_THRESHOLDS)
