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
    # The public page's address is made by the user's settings, never typed in; the
    # daily digest's moments are its own (achievements.digest).
    readonly_fields = ["share_token", "digest_since", "last_digest_at"]
    formfield_overrides = STORABLE_JSON
