"""The admin's side of holding badges: unlocks, the ledger, staff grants and revocations.

Every grant and revocation goes through achievements.awards, which checks
it and records it with the staff member and their reason; these views only
ask for what it needs.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from achievements import awards
from achievements.admin_lists import DateHierarchyAdmin
from achievements.models import Badge, LedgerEntry, Unlock

User = get_user_model()
BATCH_GRANT_LIMIT = 1000


class GrantForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=User.objects.order_by("username"),
        widget=forms.TextInput,
        to_field_name="username",
        help_text="The user's username.",
        error_messages={"invalid_choice": "There is no user with this username."},
    )
    badge = forms.ModelChoiceField(queryset=Badge.objects.active())
    tier = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1000,
        help_text="Tiered badges: the tier to grant (every tier up to it is granted). "
        "Empty: the next one.",
    )
    period = forms.CharField(
        required=False,
        max_length=32,
        help_text="Repeatable badges: the period, e.g. 2026-W49 or 2026-12-07. Empty: the "
        "user's current one.",
    )
    reason = forms.CharField(
        max_length=awards.REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why: kept in the badge's history, with your name.",
    )


class BatchGrantForm(forms.Form):
    badge = forms.ModelChoiceField(queryset=Badge.objects.active())
    tier = GrantForm.base_fields["tier"]
    reason = GrantForm.base_fields["reason"]


class RevokeForm(forms.Form):
    reason = forms.CharField(
        max_length=awards.REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why: kept in the badge's history, with your name. The rule does not "
        "award a revoked badge again until it is granted.",
    )


def _may_award(request: HttpRequest) -> bool:
    return bool(request.user.has_perm("achievements.change_unlock"))


def _refusal(refused: awards.AwardRefused, form: forms.Form) -> None:
    form.add_error(refused.field if refused.field in form.fields else None, refused.message)


@admin.register(Unlock)
class UnlockAdmin(DateHierarchyAdmin):
    list_display = [
        "user",
        "badge",
        "earning",
        "unlocked_at",
        "status",
        "delivered_at",
        "seen_at",
    ]
    list_filter = [
        "badge",
        ("ended_at", admin.EmptyFieldListFilter),
        "ending",
        "granted",
        "silent",
        ("seen_at", admin.EmptyFieldListFilter),
    ]
    list_select_related = ["user", "badge"]
    search_fields = ["user__username", "badge__key", "badge__name"]
    raw_id_fields = ["user", "event"]
    date_hierarchy = "unlocked_at"
    actions = ["revoke"]
    readonly_fields = [
        "user",
        "badge",
        "period",
        "tier",
        "earning",
        "status",
        "version",
        "event_ids",
        "unlocked_at",
        "event",
        "silent",
        "delivered_at",
        "seen_at",
        "digested_at",
        "took",
        "expires_at",
        "reminded_at",
        "history",
    ]
    exclude = ["granted", "ended_at", "ending"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return _may_award(request)

    def has_delete_permission(self, request: HttpRequest, obj: Unlock | None = None) -> bool:
        return False  # history is kept: revoke instead

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return _may_award(request)

    @admin.display(description="Earning")
    def earning(self, unlock: Unlock) -> str:
        """Which earning of the badge: a tier, a period, or the one unlock."""
        return unlock.suffix().strip(" ()") or "once"

    @admin.display(description="Status", ordering="ended_at")
    def status(self, unlock: Unlock) -> str:
        held = "granted" if unlock.granted else "earned"
        if unlock.ended_at is None:
            return f"Held ({held})"
        return f"{unlock.get_ending_display()} ({held})"

    @admin.display(description="History")
    def history(self, unlock: Unlock) -> str:
        entries = unlock.ledger.select_related("actor", "api_key").order_by("at", "pk")
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{}: {} by {}{}</li>",
                (
                    (
                        entry.at.strftime("%Y-%m-%d %H:%M"),
                        entry.get_kind_display(),
                        entry.by,
                        f" — {entry.reason}" if entry.reason else "",
                    )
                    for entry in entries
                ),
            ),
        )

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """Grant a badge to one user, with a reason."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {
            name: request.GET[name]
            for name in ("user", "badge")
            if name in request.GET and len(request.GET[name]) <= 150
        }
        form = GrantForm(request.POST if request.method == "POST" else None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                awards.grant_badge(
                    user_id=data["user"].pk,
                    badge=data["badge"],
                    reason=data["reason"],
                    by=awards.Actor(user_id=request.user.pk),
                    tier=data["tier"],
                    period=data["period"] or None,
                )
            except awards.AwardRefused as refused:
                _refusal(refused, form)
            else:
                self.message_user(
                    request,
                    f"Granted {data['badge'].name} to {data['user']}.",
                    messages.SUCCESS,
                )
                return redirect(
                    f"{reverse('admin:achievements_unlock_changelist')}?user__id__exact="
                    f"{data['user'].pk}"
                )
        return self._form_page(request, form, "Grant a badge", "Grant", intro=None)

    def get_urls(self) -> list[Any]:
        revoke = path(
            "revoke/",
            self.admin_site.admin_view(self.revoke_view),
            name="achievements_unlock_revoke",
        )
        return [revoke, *super().get_urls()]

    @admin.action(description="Revoke selected earnings…", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Unlock]) -> HttpResponse:
        held = queryset.filter(ended_at__isnull=True)
        ids = ",".join(str(pk) for pk in held.values_list("pk", flat=True))
        return redirect(f"{reverse('admin:achievements_unlock_revoke')}?ids={ids}")

    def revoke_view(self, request: HttpRequest) -> HttpResponse:
        """Ask for the reason, then revoke each chosen earning (a tier and those above it)."""
        if not self.has_revoke_permission(request):
            raise PermissionDenied
        raw = (
            request.POST.get("ids", "") if request.method == "POST" else request.GET.get("ids", "")
        )
        ids = [
            int(v) for v in raw.split(",")[:1000] if v.isascii() and v.isdecimal() and len(v) <= 18
        ]
        unlocks = list(
            Unlock.objects.held().filter(pk__in=ids).select_related("user", "badge").order_by("pk")
        )
        if not unlocks:
            self.message_user(
                request, "Choose one or more held earnings to revoke.", messages.WARNING
            )
            return redirect("admin:achievements_unlock_changelist")
        form = RevokeForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            done, refused = 0, []
            for unlock in unlocks:
                try:
                    done += len(
                        awards.revoke_badge(
                            user_id=unlock.user_id,
                            badge=unlock.badge,
                            reason=form.cleaned_data["reason"],
                            by=awards.Actor(user_id=request.user.pk),
                            tier=unlock.tier if unlock.badge.tiers else None,
                            # "" is a repeatable badge's earning from before it repeated.
                            period=unlock.period if unlock.badge.repeat else None,
                        )
                    )
                except awards.AwardRefused as exc:
                    # Revoked already with a lower tier chosen in the same batch.
                    refused.append(f"{unlock}: {exc.message}")
            self.message_user(request, f"Revoked {done} earning(s).", messages.SUCCESS)
            for line in refused:
                self.message_user(request, line, messages.WARNING)
            return redirect("admin:achievements_unlock_changelist")
        return self._form_page(
            request,
            form,
            "Revoke earnings",
            "Revoke",
            intro=unlocks,
            hidden={"ids": ",".join(str(u.pk) for u in unlocks)},
        )

    def _form_page(
        self,
        request: HttpRequest,
        form: forms.Form,
        title: str,
        button: str,
        *,
        intro: list[Any] | None,
        hidden: dict[str, str] | None = None,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": title,
            "button": button,
            "listed": intro or [],
            "hidden": hidden or {},
        }
        return TemplateResponse(request, "admin/achievements/unlock/award.html", context)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(DateHierarchyAdmin):
    list_display = ["at", "user", "badge", "kind", "earning", "cause", "reason"]
    list_filter = ["kind", "badge"]
    list_select_related = ["user", "badge", "unlock", "actor", "api_key"]
    search_fields = ["user__username", "badge__key", "badge__name", "reason"]
    date_hierarchy = "at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in LedgerEntry._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Earning")
    def earning(self, entry: LedgerEntry) -> str:
        return entry.unlock.suffix().strip(" ()") or "once"

    @admin.display(description="By")
    def cause(self, entry: LedgerEntry) -> str:
        return entry.by


class AccoladeUserAdmin(UserAdmin):
    """Django's user admin, with a user's badge history and grants to many users."""

    actions = ["grant_badge"]  # Django's own user admin has none of its own
    readonly_fields = ["badges"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None:
            fieldsets.append(("Badges", {"fields": ["badges"]}))
        return fieldsets

    @admin.display(description="Badge history")
    def badges(self, user: Any) -> str:
        held = reverse("admin:achievements_unlock_changelist")
        ledger = reverse("admin:achievements_ledgerentry_changelist")
        grant = reverse("admin:achievements_unlock_add")
        count = Unlock.objects.held().filter(user=user).count()
        return format_html(
            '{} held · <a href="{}?user__id__exact={}">earnings</a> · '
            '<a href="{}?user__id__exact={}">history</a> · '
            '<a href="{}?user={}">grant a badge</a>',
            count,
            held,
            user.pk,
            ledger,
            user.pk,
            grant,
            user.get_username(),
        )

    def has_grant_badge_permission(self, request: HttpRequest) -> bool:
        return _may_award(request)

    @admin.action(description="Grant a badge to selected users…", permissions=["grant_badge"])
    def grant_badge(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        users = list(queryset.order_by("username")[: BATCH_GRANT_LIMIT + 1])
        if len(users) > BATCH_GRANT_LIMIT:
            self.message_user(
                request,
                f"Choose at most {BATCH_GRANT_LIMIT} users at a time.",
                messages.WARNING,
            )
            return None
        form = BatchGrantForm(request.POST if "_grant" in request.POST else None)
        if "_grant" in request.POST and form.is_valid():
            granted, refused = 0, []
            for user in users:
                try:
                    awards.grant_badge(
                        user_id=user.pk,
                        badge=form.cleaned_data["badge"],
                        reason=form.cleaned_data["reason"],
                        by=awards.Actor(user_id=request.user.pk),
                        tier=form.cleaned_data["tier"],
                    )
                    granted += 1
                except awards.AwardRefused as exc:
                    refused.append(f"{user}: {exc.message}")
            badge = form.cleaned_data["badge"].name
            self.message_user(request, f"Granted {badge} to {granted} user(s).", messages.SUCCESS)
            for line in refused:
                self.message_user(request, f"Not granted to {line}", messages.WARNING)
            return None
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Grant a badge",
            "button": "Grant",
            "listed": users,
            "action": "grant_badge",
            "selected": [user.pk for user in users],
        }
        return TemplateResponse(request, "admin/achievements/unlock/award.html", context)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AccoladeUserAdmin)
