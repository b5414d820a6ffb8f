"""The webhooks' admin: endpoints with their health and delivery log, and the deliveries."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from achievements.admin_lists import DateHierarchyAdmin
from webhooks import sending
from webhooks.addresses import Refused, resolve
from webhooks.models import Attempt, Delivery, Endpoint, Kind, Status

ROTATION_GRACE_HOURS = 24


class EndpointForm(forms.ModelForm):
    url = forms.URLField(
        label="URL",
        max_length=2000,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"class": "vURLField", "size": 80}),
        help_text="Where messages are POSTed, over http or https. It must resolve to public "
        "addresses; it is checked again before every send.",
    )
    kinds = forms.MultipleChoiceField(
        choices=Kind.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="What this endpoint is told of.",
    )

    class Meta:
        model = Endpoint
        fields = ["url", "description", "kinds", "include_silent", "is_active"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            resolve(url)
        except Refused as exc:
            raise forms.ValidationError(f"This URL {exc}.") from None
        return url


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["__str__", "url", "kind_list", "is_active", "health", "waiting", "failed"]
    list_filter = ["is_active"]
    search_fields = ["url", "description"]
    readonly_fields = [
        "secret",
        "previous_secret_until",
        "health",
        "last_success_at",
        "consecutive_failures",
        "delivery_log",
    ]
    actions = ["send_test_message", "send_failed_again", "enable_again", "rotate_secret"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Endpoint]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                waiting_count=Count("deliveries", filter=Q(deliveries__status=Status.PENDING)),
                failed_count=Count("deliveries", filter=Q(deliveries__status=Status.FAILED)),
            )
        )

    def get_fieldsets(self, request: HttpRequest, obj: Endpoint | None = None) -> Any:
        main = (None, {"fields": ["url", "description", "kinds", "include_silent", "is_active"]})
        if obj is None:
            return [main]
        return [
            main,
            ("Signing", {"fields": ["secret", "previous_secret_until"]}),
            ("Health", {"fields": ["health", "last_success_at", "consecutive_failures"]}),
            ("Delivery log", {"fields": ["delivery_log"]}),
        ]

    @admin.display(description="kinds")
    def kind_list(self, endpoint: Endpoint) -> str:
        return ", ".join(endpoint.kinds)

    @admin.display(description="health")
    def health(self, endpoint: Endpoint) -> str:
        if not endpoint.is_active and endpoint.disabled_at is not None:
            return format_html(
                "Turned off {}: {}",
                f"{endpoint.disabled_at:%Y-%m-%d %H:%M}",
                endpoint.disabled_reason,
            )
        if not endpoint.is_active:
            return "Off"
        if endpoint.failing_since is not None:
            since, count = endpoint.failing_since, endpoint.consecutive_failures
            return f"Failing since {since:%Y-%m-%d %H:%M} ({count} in a row)"
        return "OK" if endpoint.last_success_at else "Nothing sent yet"

    @admin.display(description="waiting")
    def waiting(self, endpoint: Endpoint) -> int:
        return getattr(endpoint, "waiting_count", 0)

    @admin.display(description="failed")
    def failed(self, endpoint: Endpoint) -> Any:
        count = getattr(endpoint, "failed_count", 0)
        if not count:
            return 0
        url = reverse("admin:webhooks_delivery_changelist")
        return format_html(
            '<a href="{}?endpoint__id__exact={}&amp;status__exact=failed">{}</a>',
            url,
            endpoint.pk,
            count,
        )

    @admin.display(description="recent tries")
    def delivery_log(self, endpoint: Endpoint) -> str:
        tries = list(endpoint.attempts.select_related("delivery")[:20])
        if not tries:
            return "No tries yet."
        everything = (
            reverse("admin:webhooks_attempt_changelist") + f"?endpoint__id__exact={endpoint.pk}"
        )
        caption = "The last try" if len(tries) == 1 else f"The last {len(tries)} tries"
        return format_html(
            "{}<p><a href='{}'>The whole log</a></p>", tries_table(tries, caption, 120), everything
        )

    @admin.action(description="Send a test message")
    def send_test_message(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        for endpoint in queryset:
            result = sending.send_test(endpoint)
            if result.succeeded:
                self.message_user(
                    request,
                    f"{endpoint}: the test message was delivered (HTTP {result.status_code}, "
                    f"{result.latency_ms} ms).",
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    f"{endpoint}: the test message failed: {result.error}.",
                    messages.ERROR,
                )

    @admin.action(description="Send failed messages again")
    def send_failed_again(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        failed = list(Delivery.objects.filter(endpoint__in=queryset, status=Status.FAILED))
        count = sending.send_again(failed)
        self.message_user(request, f"{count} failed message(s) queued to be sent again.")

    @admin.action(description="Enable again")
    def enable_again(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        endpoints = list(queryset.filter(is_active=False))
        for endpoint in endpoints:
            endpoint.enable()
        sending.kick_on_commit([e.pk for e in endpoints])
        self.message_user(
            request, f"{len(endpoints)} endpoint(s) enabled; their waiting messages go now."
        )

    @admin.action(description="Rotate the signing secret")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        for endpoint in queryset:
            endpoint.rotate_secret(timezone.now(), timedelta(hours=ROTATION_GRACE_HOURS))
        self.message_user(
            request,
            f"New secrets made. For {ROTATION_GRACE_HOURS} hours messages carry a signature "
            "with the old secret too, while receivers switch.",
        )

    def save_model(self, request: HttpRequest, obj: Endpoint, form: Any, change: bool) -> None:
        was_active = change and Endpoint.objects.filter(pk=obj.pk, is_active=True).exists()
        super().save_model(request, obj, form, change)
        if change and obj.is_active and not was_active:
            obj.enable()
            sending.kick_on_commit([obj.pk])


def tries_table(tries: list[Attempt], caption: str, excerpt_chars: int) -> str:
    """Tries as a table: when, which message, status, latency, outcome, the answer's start.

    In a focusable region, so a keyboard scrolls it sideways where it is wider
    than the screen (a phone's).
    """
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
        (
            (
                f"{a.at:%Y-%m-%d %H:%M:%S}",
                a.delivery.message_id,
                a.status_code or "—",
                f"{a.latency_ms} ms" if a.latency_ms is not None else "—",
                (a.error or "delivered") + (" (probe)" if a.probe else ""),
                a.response_excerpt[:excerpt_chars],
            )
            for a in tries
        ),
    )
    return format_html(
        "<div class='delivery-log' tabindex='0' role='region' aria-label='{}'>"
        "<table><caption>{}</caption><thead><tr><th scope='col'>At</th>"
        "<th scope='col'>Message</th><th scope='col'>Status</th><th scope='col'>Latency</th>"
        "<th scope='col'>Outcome</th><th scope='col'>Response</th></tr></thead>"
        "<tbody>{}</tbody></table></div>",
        caption,
        caption,
        rows,
    )


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "message",
        "kind",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", "endpoint", "message__kind"]
    list_select_related = ["message", "endpoint"]
    search_fields = ["message__id"]
    readonly_fields = (
        "message",
        "endpoint",
        "status",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "last_status_code",
        "last_error",
        "tries",
        "body",
    )
    fields = readonly_fields
    actions = ["send_these_again"]

    @admin.display(description="kind", ordering="message__kind")
    def kind(self, delivery: Delivery) -> str:
        return delivery.message.kind

    @admin.display(description="tries")
    def tries(self, delivery: Delivery) -> str:
        tries = list(delivery.tries.select_related("delivery"))
        return (
            tries_table(tries, "Every try, newest first", sending.EXCERPT_CHARS)
            if tries
            else "None yet."
        )

    @admin.display(description="body")
    def body(self, delivery: Delivery) -> str:
        return format_html(
            "<pre tabindex='0' aria-label='The body'>{}</pre>",
            json.dumps(delivery.message.body(), indent=2, ensure_ascii=False),
        )

    @admin.action(description="Send again")
    def send_these_again(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = sending.send_again(list(queryset))
        self.message_user(request, f"{count} message(s) queued to be sent again.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Attempt)
class AttemptAdmin(DateHierarchyAdmin):
    list_display = [
        "at",
        "endpoint",
        "message",
        "status_code",
        "latency",
        "succeeded",
        "probe",
        "error",
    ]
    list_filter = ["succeeded", "probe", "endpoint"]
    list_select_related = ["endpoint", "delivery"]
    date_hierarchy = "at"

    @admin.display(description="message", ordering="delivery__message")
    def message(self, attempt: Attempt) -> str:
        return attempt.delivery.message_id

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, attempt: Attempt) -> str:
        return f"{attempt.latency_ms} ms" if attempt.latency_ms is not None else "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
