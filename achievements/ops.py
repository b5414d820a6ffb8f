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


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, for staff with "Can read the pipeline's metrics" or an
    API key (`Authorization: Bearer KEY`)."""
    from api.auth import authenticate

    user = getattr(request, "user", None)
    allowed = (
        user is not None
        and user.is_active
        and user.is_staff
        and user.has_perm("achievements.view_metrics")
    ) or (authenticate(request) is not None)
    if not allowed and "Authorization" in request.headers:
        from api.auth import refused

        wait = refused(request)
        if wait is not None:
            response = HttpResponse(
                f"Too many requests with an invalid API key; retry after {wait} s.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(wait)
            return response
    if not allowed:
        response = HttpResponse(
            'Metrics are not public: sign in as staff with the permission "Can read the '
            "pipeline's metrics\", or send an API key as 'Authorization: Bearer KEY'.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="accolade"'
        return response
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
