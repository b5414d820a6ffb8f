from __future__ import annotations

from django.apps import AppConfig


class PlacesConfig(AppConfig):
    name = "examples.places"
    label = "places"
    verbose_name = "Example producer: places and photos"
