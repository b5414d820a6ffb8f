"""Operations endpoints: /healthz for load balancers and /metrics for Prometheus."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from achievements import metrics

logger = logging.getLogger(__name__)


@never_cache
@require_http_methods(["GET", "HEAD"])  # load balancers often probe with HEAD
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, Redis and at least one worker answer; 503 naming what fails.

    Public, so it says only which part fails; the reason goes to the log.
    """
    checks: dict[str, str] = {}
    healthy = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception:
        logger.exception("Health check: the database does not answer")
        checks["database"] = "failing"
        healthy = False
    if settings.ACCOLADE_EMBEDDED:
        checks["redis"] = "not used (embedded mode)"
        checks["workers"] = "in-process (embedded mode)"
    else:
        try:
            metrics.redis_client().ping()
            checks["redis"] = "ok"
        except Exception:
            logger.exception("Health check: Redis does not answer")
            checks["redis"] = "failing"
            healthy = False
        try:
            alive = metrics.live_workers()
        except Exception:
            alive = []
        checks["workers"] = f"{len(alive)} alive" if alive else "none alive"
        healthy = healthy and bool(alive)
    return JsonResponse(
        {"status": "ok" if healthy else "failing", "checks": checks},
        status=200 if healthy else 503,
    )


def _text(status: int, text: str, **headers: str) -> HttpResponse:
    response = HttpResponse(text + "\n", status=status, content_type="text/plain; charset=utf-8")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, for staff with "Can read the pipeline's metrics" or an
    API key with the scope metrics:read (`Authorization: Bearer KEY`)."""
    from api.auth import authenticate, refused

    user = getattr(request, "user", None)
    if not (
        user is not None
        and user.is_active
        and user.is_staff
        and user.has_perm("achievements.view_metrics")
    ):
        api_key = authenticate(request)
        if api_key is None:
            wait = refused(request) if "Authorization" in request.headers else None
            if wait is not None:
                return _text(
                    429,
                    f"Too many requests with an invalid API key; retry after {wait} s.",
                    Retry_After=str(wait),
                )
            return _text(
                401,
                'Metrics are not public: sign in as staff with the permission "Can read the '
                "pipeline's metrics\", or send an API key as 'Authorization: Bearer KEY'.",
                WWW_Authenticate='Bearer realm="accolade"',
            )
        if not api_key.allows("metrics:read"):
            return _text(403, "This API key lacks the scope 'metrics:read'.")
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
