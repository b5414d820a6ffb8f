"""ASGI entry point: HTTP goes to Django, WebSockets to the Channels router.

HTTP is served by Django's own ASGIHandler unless WEB_HTTP_HANDLER chooses
the one-hop handler of project/handlers.py. Importing this module tunes
nothing in the process: a serving web process does that in project/web.py.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def http_application() -> Any:
    """The HTTP application WEB_HTTP_HANDLER names."""
    if settings.WEB_HTTP_HANDLER == "one-hop":
        from project.handlers import HttpHandlers

        return HttpHandlers()
    return ASGIHandler()


# Django must be set up before anything imports models, consumers included.
django.setup(set_prefix=False)
django_asgi_app = http_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from achievements.dispatch import ensure_embedded_sweeper  # noqa: E402
from achievements.routing import websocket_urlpatterns  # noqa: E402
from achievements.socket_auth import SameOriginValidator, SessionUserMiddleware  # noqa: E402


def behind_trusted_proxies(app: Any) -> Any:
    """`app`, taking the client's address and scheme from TRUSTED_PROXIES' headers.

    Outermost, for HTTP and sockets alike: a connection from a trusted proxy
    gets the last X-Forwarded-For entry that is not a trusted proxy as its
    client, and X-Forwarded-Proto as its scheme; anyone else's forwarding
    headers are ignored. With no trusted proxy, `app` itself.
    """
    if not settings.TRUSTED_PROXIES:
        return app
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    return ProxyHeadersMiddleware(app, trusted_hosts=list(settings.TRUSTED_PROXIES))


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(SessionUserMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
application = behind_trusted_proxies(application)

# Embedded mode: the serving process sweeps its own outbox (what beat does
# otherwise), so a restarted runserver picks up what the last one left.
ensure_embedded_sweeper()
