from __future__ import annotations

from django.urls import path

from achievements import views

app_name = "achievements"

urlpatterns = [
    path("", views.home, name="home"),
    path("badges/", views.badges, name="badges"),
    path("p/<slug:token>/", views.public, name="public"),
    path("badges/<slug:key>/preview.png", views.badge_preview_image, name="badge_image"),
]
