from __future__ import annotations

from django.urls import path

from api import views

app_name = "api"

urlpatterns = [
    path("openapi.json", views.schema, name="schema"),
    path("events", views.events, name="events"),
    path("events/<str:event_id>", views.event_status, name="event"),
    path("users/<str:user_id>/badges", views.user_badges, name="user-badges"),
    path("users/<str:user_id>/badges/<str:badge_key>", views.user_badge, name="user-badge"),
    path("users/<str:user_id>/history", views.user_history, name="user-history"),
]
