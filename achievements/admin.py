from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from achievements import ledger_admin as _ledger_admin  # noqa: F401  (registers its admins)
from achievements import reevaluation, rulefiles
from achievements.actions import LinkConflict, link_external_identity
from achievements.admin_lists import DateHierarchyAdmin
from achievements.dispatch import redrive_events
from achievements.models import (
    Badge,
    BadgeRequirement,
    BadgeTranslation,
    DedupRule,
    Event,
    EventType,
    ExternalIdentity,
    Reevaluation,
    Unlock,
    UserBadge,
    format_number,
)
from achievements.preview import preview_requirements
from achievements.progress import find_cycle
from achievements.versions import record_version
from project.forms import STORABLE_JSON
from project.inputs import json_depth_problem

# What the preview page lets staff edit: the badge's rule, in rule-file form.
PREVIEW_FIELDS = ("tiers", "repeat", "requirements")


class ReevaluationForm(forms.Form):
    since = forms.DateTimeField(
        required=False,
        help_text="Only users with events on or after this (YYYY-MM-DD or YYYY-MM-DD HH:MM). "
        "Empty: from the first event.",
    )
    until = forms.DateTimeField(
        required=False, help_text="Only users with events before this. Empty: up to now."
    )
    notify = forms.ChoiceField(
        label="Users who newly qualify",
        choices=[("silent", "Unlock silently"), ("notify", "Unlock and notify them (a toast)")],
        initial="silent",
        widget=forms.RadioSelect,
    )
    confirm_losses = forms.BooleanField(
        label="Take the badge from users who no longer meet it",
        required=False,
        help_text="Some of these badges hold only while their rule holds: re-evaluating takes "
        "them (or a tier) from holders their history no longer supports. Staff's grants stay.",
    )

    def __init__(self, *args: Any, holding: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = holding
        if not holding:
            del self.fields["confirm_losses"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.holding and not cleaned.get("confirm_losses"):
            self.add_error(
                "confirm_losses", "Tick this to re-evaluate badges that can be taken away."
            )
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "Give a time after the start of the range.")
        return cleaned


class BadgeRequirementForm(forms.ModelForm):
    class Meta:
        model = BadgeRequirement
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Show a stored 5.0000 as 5, the way staff typed it.
        if self.instance.pk and self.instance.threshold is not None:
            self.initial["threshold"] = format_number(self.instance.threshold)


class BadgeRequirementFormSet(BaseInlineFormSet):
    """Refuses composites with no parts, that require their own badge, or that close a circle."""

    def clean(self) -> None:
        super().clean()
        badge = self.instance
        edges: dict[int, set[int]] = {}
        others = BadgeRequirement.objects.filter(kind="composite").prefetch_related(
            "composite_badges"
        )
        if badge.pk:
            others = others.exclude(badge_id=badge.pk)
        for requirement in others:
            edges.setdefault(requirement.badge_id, set()).update(
                part.pk for part in requirement.composite_badges.all()
            )
        kept = [
            form.instance
            for form in self.forms
            if getattr(form, "cleaned_data", None) and not form.cleaned_data.get("DELETE")
        ]
        if kept and not any(form.errors for form in self.forms):
            labels = {"tiers": "Tiers", "repeat": "Repeat"}
            problems = badge.rule_problems(kept)
            if problems:
                raise forms.ValidationError(
                    [f"{labels[name]}: {message}" for name, message in problems.items()]
                )
        parts: set[int] = set()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or data.get("kind") != "composite":
                continue
            chosen = {part.pk for part in data.get("composite_badges") or []}
            if not chosen:
                form.add_error(
                    "composite_badges", "Choose the badges this requirement is made of."
                )
            elif badge.pk in chosen:
                form.add_error("composite_badges", "A badge cannot require itself.")
            parts |= chosen
        if badge.pk and parts:
            edges[badge.pk] = parts
            cycle = find_cycle(edges)
            if cycle and badge.pk in cycle:
                names = dict(Badge.objects.filter(pk__in=cycle).values_list("pk", "name"))
                path_text = " → ".join(names.get(pk, str(pk)) for pk in cycle)
                raise forms.ValidationError(
                    f"These badges would require each other in a circle: {path_text}."
                )


class BadgeRequirementInline(admin.TabularInline):
    model = BadgeRequirement
    form = BadgeRequirementForm
    formset = BadgeRequirementFormSet
    formfield_overrides = STORABLE_JSON
    extra = 0
    min_num = 1
    # The same fields, in the same order, as a requirement in a rule file.
    fields = [*rulefiles.REQUIREMENT_FIELDS[:-1], "composite_badges", "label"]


class BadgeTranslationInline(admin.StackedInline):
    """The badge's words in the site's other languages (settings.LANGUAGES)."""

    model = BadgeTranslation
    formfield_overrides = STORABLE_JSON
    extra = 0
    verbose_name = "translation"


@admin.register(Badge)
class BadgeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "key",
        "icon",
        "category",
        "is_active",
        "requirement_summary",
        "sort_order",
    ]
    list_filter = ["is_active", "category"]
    list_editable = ["sort_order"]
    search_fields = ["name", "key", "description"]
    prepopulated_fields = {"key": ["name"]}
    readonly_fields = ["preview_link", "version_link", "holders_link"]
    inlines = [BadgeRequirementInline, BadgeTranslationInline]
    actions = ["reevaluate"]
    formfield_overrides = STORABLE_JSON
    object_history_template = "admin/achievements/badge/object_history.html"

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("requirements")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Record the saved rule as a version, once the requirements are saved too."""
        super().save_related(request, form, formsets, change)
        badge = form.instance
        before = badge.versions.order_by("-number").values_list("pk", flat=True).first()
        version = record_version(badge, by=request.user, source="admin")
        if change and badge.holds_while_met and badge.is_active and version.pk != before:
            # Held only while its rule holds: the change reaches holders with their next
            # activity, or the next moment it could end; re-evaluating applies it now.
            url = f"{reverse('admin:achievements_badge_reevaluate')}?ids={badge.pk}"
            self.message_user(
                request,
                format_html(
                    "{} holds only while its rule holds: holders the changed rule no longer "
                    'supports lose it with their next activity. <a href="{}">Re-evaluate its '
                    "history</a> to apply the change to everyone now.",
                    badge.name,
                    url,
                ),
                messages.WARNING,
            )

    @admin.display(description="Rule version")
    def version_link(self, badge: Badge) -> str:
        latest = badge.versions.order_by("-number").first() if badge.pk else None
        if latest is None:
            return "Recorded when the badge is saved."
        url = reverse("admin:achievements_badge_history", args=[badge.pk])
        return format_html(
            '<a href="{}">Version {}</a> ({} of them; every change, with what changed)',
            url,
            latest.number,
            badge.versions.count(),
        )

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The admin's History page, led by the badge's rule versions and their diffs."""
        badge = self.get_object(request, object_id)
        versions = (
            list(badge.versions.select_related("created_by").order_by("-number")) if badge else []
        )
        for version in versions:
            version.rule_json = json.dumps(version.rule, indent=2, ensure_ascii=False)  # type: ignore[attr-defined]
        return super().history_view(
            request, object_id, extra_context={**(extra_context or {}), "versions": versions}
        )

    @admin.display(description="Requirements")
    def requirement_summary(self, badge: Badge) -> str:
        return "; ".join(r.describe() for r in badge.requirements.all())

    @admin.display(description="Rule change preview")
    def preview_link(self, badge: Badge) -> str:
        if not badge.pk:
            return "Save the badge first."
        url = reverse("admin:achievements_badge_preview", args=[badge.pk])
        return format_html('<a href="{}">Preview a change to these requirements</a>', url)

    @admin.display(description="Holders")
    def holders_link(self, badge: Badge) -> str:
        if not badge.pk:
            return "Save the badge first."
        held = Unlock.objects.held().filter(badge=badge).values("user").distinct().count()
        unlocks = reverse("admin:achievements_unlock_changelist")
        return format_html(
            '<a href="{}?badge__id__exact={}&amp;ended_at__isnull=True">{} user(s) hold it</a>'
            ' · <a href="{}?badge={}">grant it to a user</a>',
            unlocks,
            badge.pk,
            held,
            reverse("admin:achievements_unlock_add"),
            badge.pk,
        )

    def get_urls(self) -> list[Any]:
        preview = path(
            "<path:object_id>/preview/",
            self.admin_site.admin_view(self.preview_view),
            name="achievements_badge_preview",
        )
        reevaluate = path(
            "reevaluate/",
            self.admin_site.admin_view(self.reevaluate_view),
            name="achievements_badge_reevaluate",
        )
        return [preview, reevaluate, *super().get_urls()]

    @admin.action(description="Re-evaluate history of selected badges", permissions=["change"])
    def reevaluate(self, request: HttpRequest, queryset: QuerySet[Badge]) -> HttpResponse:
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        return redirect(f"{reverse('admin:achievements_badge_reevaluate')}?ids={ids}")

    def reevaluate_view(self, request: HttpRequest) -> HttpResponse:
        """Choose the date range and whether to notify, then start the job."""
        # Starting a job can toast users: it takes the right to change badges
        # and the right to start re-evaluations.
        if not (
            self.has_change_permission(request)
            and request.user.has_perm("achievements.add_reevaluation")
        ):
            raise PermissionDenied
        raw = (
            request.POST.getlist("badge")
            if request.method == "POST"
            else (request.GET.get("ids", "").split(","))
        )
        ids = [
            int(value)
            for value in (v.strip() for v in raw)
            if value.isascii() and value.isdecimal() and len(value) <= 18
        ]
        badges = list(Badge.objects.active().filter(pk__in=ids))
        if not badges:
            self.message_user(
                request, "Choose one or more active badges to re-evaluate.", messages.WARNING
            )
            return redirect("admin:achievements_badge_changelist")
        form = ReevaluationForm(
            request.POST if request.method == "POST" else None,
            holding=any(badge.holds_while_met for badge in badges),
        )
        if request.method == "POST" and form.is_valid():
            job = reevaluation.start(
                badges,
                since=form.cleaned_data["since"],
                until=form.cleaned_data["until"],
                notify=form.cleaned_data["notify"] == "notify",
                by=request.user,
            )
            return redirect("admin:achievements_reevaluation_change", job.pk)
        context = {
            **self.admin_site.each_context(request),
            "badges": badges,
            "form": form,
            "opts": self.model._meta,
            "title": "Re-evaluate history",
        }
        return TemplateResponse(request, "admin/achievements/reevaluation/start.html", context)

    def _apply_rule(
        self, request: HttpRequest, badge: Badge, document: dict[str, Any], holding: bool
    ) -> HttpResponse:
        rulefiles.import_badges(document, by=request.user, source="admin preview")
        if not holding or not badge.is_active:
            self.message_user(request, "Rule updated.", messages.SUCCESS)
            return redirect("admin:achievements_badge_change", badge.pk)
        # Held only while its rule holds: the change applies to history at once.
        job = reevaluation.start([badge], since=None, until=None, notify=True, by=request.user)
        self.message_user(request, "Rule updated; applying it to history now.", messages.SUCCESS)
        return redirect("admin:achievements_reevaluation_change", job.pk)

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Edit a badge's requirements as JSON, see what the change would do, then apply it."""
        badge = self.get_object(request, object_id)
        if badge is None:
            raise Http404("No such badge.")
        if not self.has_change_permission(request, badge):
            raise PermissionDenied
        entry = rulefiles.export_badges_data([badge])[0]
        rule = {name: entry[name] for name in PREVIEW_FIELDS}
        text = json.dumps(rule, indent=2, ensure_ascii=False)
        context: dict[str, Any] = {"problems": [], "preview": None}
        if request.method == "POST":
            text = request.POST.get("rule", "")
            edited = None
            problem = json_depth_problem(text)
            if problem:
                context["problems"] = [f"rule: {problem}"]
            else:
                try:
                    edited = json.loads(text)
                except ValueError as exc:
                    context["problems"] = [f"rule: not valid JSON: {exc}"]
            if edited is not None and (
                not isinstance(edited, dict) or not set(edited) <= set(PREVIEW_FIELDS)
            ):
                context["problems"] = [
                    "rule: give an object with "
                    + ", ".join(f'"{name}"' for name in PREVIEW_FIELDS)
                    + " (the requirements as in a rule file)"
                ]
            elif edited is not None:
                document = rulefiles.document([{**entry, **edited}])
                try:
                    [(edited_badge, planned)] = rulefiles.validate(document)
                except rulefiles.RuleFileError as exc:
                    context["problems"] = exc.problems
                else:
                    preview = preview_requirements(edited_badge, planned)
                    holding = edited_badge.holds_while_met
                    losses = len(preview.would_lose) + len(preview.would_fall_back)
                    context.update(preview=preview, holds_while=holding, losses=losses)
                    if "_apply" in request.POST:
                        # Losses are confirmed for the count shown: a count that moved
                        # since (new events) is shown again, to be confirmed again.
                        confirmed = request.POST.get("confirm_losses") == str(losses)
                        if holding and losses and not confirmed:
                            context["confirm_error"] = (
                                "confirm_losses: tick the box to take the badge from "
                                f"{losses} user{'s' if losses != 1 else ''}, or change the rule."
                            )
                        else:
                            return self._apply_rule(request, badge, document, holding)
        context.update(
            self.admin_site.each_context(request),
            badge=badge,
            rule_json=text,
            opts=self.model._meta,
            title=f"Preview a rule change: {badge.name}",
        )
        return TemplateResponse(request, "admin/achievements/badge/preview.html", context)


@admin.register(UserBadge)
class UserBadgeAdmin(DateHierarchyAdmin):
    list_display = ["user", "badge", "progress", "tier_held", "completed_at", "last_evaluated_at"]
    list_filter = ["badge", ("completed_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user", "badge"]
    search_fields = ["user__username", "badge__name", "badge__key"]
    raw_id_fields = ["user", "completed_by_event"]
    # What the user holds changes through grants and revocations (Unlocks), which
    # the ledger records; not by editing the standing.
    readonly_fields = [
        "completed_at",
        "completed_by_event",
        "tier",
        "withheld",
        "granted",
        "expires_at",
        "since",
        "last_evaluated_at",
        "explanation",
    ]
    date_hierarchy = "completed_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # standings come from evaluation; grants are Unlocks › Add

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return (
            [*self.readonly_fields, "user", "badge"] if obj is not None else self.readonly_fields
        )

    @admin.display(description="Why (as the user sees it)")
    def explanation(self, user_badge: UserBadge) -> str:
        """Each requirement's standing for this user, the text their badge card shows."""
        from achievements.cards import cards_for_user

        cards = cards_for_user(user_badge.user_id, badge_ids=[user_badge.badge_id])
        if not cards:
            return "The badge is inactive or outside this user's segment."
        requirements = cards[0]["requirements"] or [
            {"text": "hidden until unlocked", "met": False}
        ]
        return format_html_join(
            "",
            "<div>{} {}</div>",
            (("✓" if r["met"] else "·", r["text"]) for r in requirements),
        )

    @admin.display(description="Tier", ordering="tier")
    def tier_held(self, user_badge: UserBadge) -> str:
        return user_badge.badge.tier_name(user_badge.tier) or "—"

    @admin.display(description="Progress")
    def progress(self, user_badge: UserBadge) -> str:
        return (
            f"{format_number(user_badge.current_value)} / {format_number(user_badge.target_value)}"
        )


class EventStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("pending", "Pending"),
            ("retrying", "Retrying"),
            ("processed", "Processed"),
            ("dead", "Dead-lettered"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        if self.value() == "pending":
            return queryset.filter(processed_at__isnull=True, dead_lettered_at__isnull=True)
        if self.value() == "retrying":
            return queryset.filter(
                processed_at__isnull=True,
                dead_lettered_at__isnull=True,
                attempts__gt=0,
                retry_at__isnull=False,
            )
        if self.value() == "processed":
            return queryset.filter(processed_at__isnull=False)
        if self.value() == "dead":
            return queryset.filter(dead_lettered_at__isnull=False)
        return queryset


@admin.register(Event)
class EventAdmin(DateHierarchyAdmin):
    """The event log, browsable but never editable: events are facts.

    Dead-lettered events (filter "status: dead-lettered") show their error and
    can be re-driven after the rule or data problem is fixed.
    """

    list_display = [
        "event_id",
        "producer",
        "event_type",
        "user",
        "source",
        "occurred_at",
        "received_at",
        "status_label",
        "attempts",
    ]
    list_filter = [EventStatusFilter, "event_type", "producer", "source"]
    list_select_related = ["user"]
    search_fields = ["event_id", "event_type", "user__username"]
    date_hierarchy = "received_at"
    actions = ["redrive"]
    readonly_fields = [
        "producer",
        "event_id",
        "event_type",
        "user",
        "source",
        "occurred_at",
        "received_at",
        "processed_at",
        "pretty_payload",
        "fingerprint",
        "status_label",
        "attempts",
        "retry_at",
        "swept_at",
        "isolated_at",
        "dead_lettered_at",
        "error",
    ]
    fields = tuple(readonly_fields)

    @admin.display(description="Payload")
    def pretty_payload(self, event: Event) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    @admin.display(description="Status")
    def status_label(self, event: Event) -> str:
        return event.status

    @admin.display(description="Last error")
    def error(self, event: Event) -> str:
        return format_html("<pre>{}</pre>", event.last_error) if event.last_error else "—"

    @admin.action(description="Re-drive selected dead-lettered events", permissions=["redrive"])
    def redrive(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        count = redrive_events(list(queryset.values_list("pk", flat=True)))
        skipped = queryset.count() - count
        message = f"Re-queued {count} dead-lettered event(s)."
        if skipped:
            message += f" {skipped} selected event(s) were not dead-lettered and were left alone."
        self.message_user(request, message, messages.SUCCESS if count else messages.WARNING)

    def has_redrive_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("achievements.change_event")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False


@admin.register(DedupRule)
class DedupRuleAdmin(admin.ModelAdmin):
    list_display = ["event_type", "payload_key", "window_seconds"]
    search_fields = ["event_type", "payload_key"]


@admin.register(EventType)
class EventTypeAdmin(admin.ModelAdmin):
    """Event types the API accepts before any badge watches them."""

    list_display = ["name", "description"]
    search_fields = ["name", "description"]
    formfield_overrides = STORABLE_JSON


class ExternalIdentityForm(forms.ModelForm):
    class Meta:
        model = ExternalIdentity
        fields = ["external_id", "user"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if (
            self.instance.pk
            and self.instance.user_id
            and cleaned.get("user") != self.instance.user
        ):
            raise forms.ValidationError(
                "This id is already linked; unlinking or moving it would move a user's history."
            )
        return cleaned


@admin.register(ExternalIdentity)
class ExternalIdentityAdmin(admin.ModelAdmin):
    """Producers' user ids. Linking one to a site user evaluates the events that waited."""

    form = ExternalIdentityForm
    list_display = ["external_id", "user", "linked_at", "waiting_events"]
    list_filter = [("user", admin.EmptyFieldListFilter)]
    search_fields = ["external_id", "user__username"]
    raw_id_fields = ["user"]
    readonly_fields = ["created_at", "linked_at"]

    @admin.display(description="Events waiting")
    def waiting_events(self, identity: ExternalIdentity) -> int:
        return (
            Event.objects.waiting_for_user().filter(external_user_id=identity.external_id).count()
        )

    def get_readonly_fields(
        self, request: HttpRequest, obj: ExternalIdentity | None = None
    ) -> Any:
        # Events refer to the id by value, so it cannot be renamed once it exists.
        return [*self.readonly_fields, "external_id"] if obj else self.readonly_fields

    def save_model(
        self, request: HttpRequest, obj: ExternalIdentity, form: Any, change: bool
    ) -> None:
        user = obj.user
        if not change:
            obj.user = None  # linking is link_external_identity's job, below
            super().save_model(request, obj, form, change)
        if user is None:
            return
        try:
            count = link_external_identity(obj.external_id, user.pk)
        except LinkConflict as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.refresh_from_db()
        self.message_user(
            request,
            f"Linked {obj.external_id} to {user}; {count} waiting event(s) queued.",
            messages.SUCCESS,
        )


@admin.register(Reevaluation)
class ReevaluationAdmin(admin.ModelAdmin):
    """Re-evaluation jobs: started from the Badge list (action), watched and cancelled here."""

    list_display = ["__str__", "state", "progress_text", "created_at", "created_by"]
    list_filter = ["state"]
    list_select_related = ["created_by"]

    @admin.display(description="Progress")
    def progress_text(self, job: Reevaluation) -> str:
        return f"{job.percent}% ({job.events_done} of {job.events_total} events)"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Reevaluation | None = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        cancel = path(
            "<path:object_id>/cancel/",
            self.admin_site.admin_view(self.cancel_view),
            name="achievements_reevaluation_cancel",
        )
        return [cancel, *super().get_urls()]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """The job's page: live progress over the socket, then its reconciliation report."""
        job = self.get_object(request, object_id)
        if job is None:
            raise Http404("No such re-evaluation.")
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "job": job,
            "opts": self.model._meta,
            "title": str(job),
        }
        return TemplateResponse(request, "admin/achievements/reevaluation/job.html", context)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return redirect("admin:achievements_reevaluation_change", object_id)
        job = self.get_object(request, object_id)
        if job is None:
            raise Http404("No such re-evaluation.")
        if not self.has_change_permission(request, job):
            raise PermissionDenied
        if reevaluation.cancel(job.pk):
            self.message_user(request, "Cancelling: the job stops before its next user.")
        else:
            self.message_user(request, "The job had already ended.", messages.WARNING)
        return redirect("admin:achievements_reevaluation_change", job.pk)


# The admin's front page links to the product reports for those allowed to see them.
admin.site.index_template = "admin/accolade_index.html"
