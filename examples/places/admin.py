from __future__ import annotations

from django.contrib import admin

from examples.places.models import Photo, Place, Visit


@admin.register(Place)
class PlaceAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(Visit)
class VisitAdmin(admin.ModelAdmin):
    list_display = ["user", "place", "visited_at"]
    list_select_related = ["user", "place"]
    raw_id_fields = ["user"]


@admin.register(Photo)
class PhotoAdmin(admin.ModelAdmin):
    list_display = ["caption", "user", "posted_at"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
