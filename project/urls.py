from __future__ import annotations

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

from achievements import ops
from achievements.report_views import reports_view

urlpatterns: list[URLPattern | URLResolver] = [
    path("healthz", ops.healthz, name="healthz"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("admin/reports/", admin.site.admin_view(reports_view), name="reports"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("places/", include("examples.places.urls")),
    path("api/v1/", include("api.urls")),
    path("", include("credentials.urls")),
    path("", include("achievements.urls")),
]

if settings.DEBUG:
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
