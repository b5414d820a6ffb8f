from __future__ import annotations

from django.contrib import admin

from accounts.models import Profile
from project.forms import STORABLE_JSON


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "time_zone"]
    list_select_related = ["user"]
    search_fields = ["user__username", "time_zone"]
    raw_id_fields = ["user"]
    formfield_overrides = STORABLE_JSON
