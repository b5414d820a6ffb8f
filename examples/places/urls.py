from __future__ import annotations

from django.urls import path

from examples.places import views

app_name = "places"

urlpatterns = [
    path("", views.visits, name="visits"),
    path("photos/", views.photos, name="photos"),
]
