from __future__ import annotations

from django.urls import path

from achievements.consumers import LiveConsumer, ReevaluationConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveConsumer.as_asgi()),
    path("ws/staff/reevaluations/<int:job_id>/", ReevaluationConsumer.as_asgi()),
]
