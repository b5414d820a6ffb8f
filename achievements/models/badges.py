"""Badges and their requirements: the rules, as data staff edit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from achievements import core, rules
from achievements.core import Standing
from achievements.models.events import (
    DedupRule,
    EventType,
    payload_field_types,
    validate_event_type,
)
from achievements.progress import Spec, format_number, unit_name


def _member(enum: Any, value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        return None


def _choices(members: Sequence[Any]) -> list[tuple[str, str]]:
    return [(member.value, member.label) for member in members]


EVALUATED_AGGREGATIONS = list(rules.Aggregation)
EVALUATED_OPERATORS = list(rules.Operator)
EVALUATED_SCOPES = list(rules.Scope)
EVALUATED_KINDS = list(rules.Kind)


class BadgeQuerySet(models.QuerySet["Badge"]):
    def active(self) -> BadgeQuerySet:
        return self.filter(is_active=True)

    def for_user(self, user_id: int | None) -> BadgeQuerySet:
        """Active badges whose segment includes the user: the only ones shown or evaluated."""
        badges = self.active()
        if user_id is None:
            return badges.filter(segment_group__isnull=True, segment_attribute="")
        from django.contrib.auth.models import Group

        from accounts.models import Profile

        groups = Group.objects.filter(user__id=user_id)
        attributes = (
            Profile.objects.filter(user_id=user_id).values_list("attributes", flat=True).first()
            or {}
        )
        in_attribute_segment = Q(segment_attribute="")
        for name, value in attributes.items():
            if isinstance(value, str | int | float | bool):
                in_attribute_segment |= Q(segment_attribute=name, segment_value=str(value))
        return badges.filter(
            Q(segment_group__isnull=True) | Q(segment_group__in=groups), in_attribute_segment
        )


class Badge(models.Model):
    key = models.SlugField(
        max_length=64,
        unique=True,
        help_text="Stable identifier used in code, exports and the API, e.g. places_visited_5.",
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    icon = models.CharField(
        max_length=16, blank=True, help_text="An emoji or short symbol shown on the badge."
    )
    category = models.CharField(
        max_length=40,
        blank=True,
        help_text="A group of badges, e.g. Travel or Photos: users can mute the notifications "
        "of a category in their settings.",
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive badges are neither shown nor evaluated."
    )
    sort_order = models.PositiveIntegerField(default=0)
    hidden = models.BooleanField(
        default=False, help_text="Shown as a mystery badge until the user unlocks it."
    )
    segment_group = models.ForeignKey(
        "auth.Group",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Only members of this group see and can earn the badge.",
    )
    segment_attribute = models.CharField(
        max_length=64,
        blank=True,
        help_text="Only users whose profile attribute of this name ...",
    )
    segment_value = models.CharField(
        max_length=100, blank=True, help_text="... has this value see and can earn the badge."
    )
    tiers = models.JSONField(
        default=list,
        blank=True,
        help_text='Levels of this badge, lowest first, e.g. [{"name": "Bronze", "threshold": 5}, '
        '{"name": "Silver", "threshold": 25}, {"name": "Gold", "threshold": 100}]. The badge '
        "unlocks at the first tier, which must be its one requirement's threshold.",
    )
    repeat = models.CharField(
        max_length=5,
        choices=[
            ("", _("Once")),
            (rules.Scope.DAY.value, _("Every day")),
            (rules.Scope.WEEK.value, _("Every week")),
            (rules.Scope.MONTH.value, _("Every month")),
        ],
        default="",
        blank=True,
        help_text="Earned again in every period its requirements are met in (each requirement "
        "counts per that period); every earning is kept.",
    )
    valid_days = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(36_600)],
        help_text="Days an earning stays valid, from the event that earned it (0: for good). "
        "An expired badge is kept in the history and earned again by activity after it "
        "expired.",
    )
    remind_days = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(36_600)],
        help_text="Expiring badges: tell the user this many days before it expires (0: no "
        "reminder).",
    )
    announce_endings = models.BooleanField(
        default=False,
        help_text="Show the user a notification when the badge expires, stops holding or staff "
        "take it back (the card changes either way).",
    )
    holds_while_met = models.BooleanField(
        "Holds only while its rule holds",
        default=False,
        help_text="Taken back when its rule stops holding (e.g. \u201cactive this month\u201d: "
        "at the end of a month without enough activity), and earned again when it holds "
        "again; a tiered badge falls back to the tier its rule still supports. Off for most "
        "badges: users do not expect to lose what they earned.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BadgeQuerySet.as_manager()

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if bool(self.segment_attribute) != bool(self.segment_value):
            raise ValidationError(
                {"segment_value": "Give both the profile attribute and its value, or neither."}
            )
        if self.segment_attribute and not rules.FIELD_PATTERN.match(self.segment_attribute):
            raise ValidationError(
                {"segment_attribute": "Use an attribute name of letters, digits and '_'."}
            )
        if self.tiers is None:  # an emptied admin field
            self.tiers = []
        problem = rules.tiers_problem(self.tiers)
        if problem:
            raise ValidationError({"tiers": f"Tiers: {problem}."})
        if self.tiers and self.repeat:
            raise ValidationError({"repeat": "A badge can have tiers or be repeatable, not both."})
        if self.holds_while_met and self.repeat:
            raise ValidationError(
                {
                    "holds_while_met": "A repeatable badge is earned per period and kept; "
                    "to hold a badge only while active, give its requirement a scope instead."
                }
            )
        if self.holds_while_met and self.valid_days:
            raise ValidationError(
                {
                    "holds_while_met": "A badge either expires after some days or holds while "
                    "its rule holds, not both."
                }
            )
        if self.valid_days and (self.tiers or self.repeat):
            raise ValidationError(
                {"valid_days": "Only a badge earned once, without tiers, can expire."}
            )
        if self.remind_days and not self.valid_days:
            raise ValidationError(
                {"remind_days": "A reminder needs the badge to expire: set its valid days."}
            )
        if self.remind_days and self.remind_days >= self.valid_days:
            raise ValidationError(
                {
                    "remind_days": f"Remind fewer days ahead than the badge is valid "
                    f"({self.valid_days})."
                }
            )

    @property
    def is_segmented(self) -> bool:
        """Whether only some users (a group, or a profile attribute) get this badge."""
        return bool(self.segment_group_id or self.segment_attribute)

    def tier_list(self) -> tuple[tuple[str, Decimal], ...]:
        """The tiers as (name, threshold) pairs, lowest first; empty for a plain badge.

        Kept with the tiers they were read from, and read again when those
        change: evaluating and carding a batch asks a badge dozens of times.
        """
        source = self.tiers or []
        cached = self.__dict__.get("_tiers_read")
        if cached is not None and cached[0] == source:
            return cached[1]
        tiers = tuple((tier["name"], Decimal(str(tier["threshold"]))) for tier in source)
        self._tiers_read = ([dict(tier) for tier in source], tiers)
        return tiers

    def tier_name(self, level: int) -> str:
        tiers = self.tier_list()
        return tiers[level - 1][0] if 0 < level <= len(tiers) else ""

    def rule_problems(self, requirements: Sequence[BadgeRequirement]) -> dict[str, str]:
        """What is wrong with this badge's tiers or repeat setting given its requirements.

        Checked where a badge and its requirements are saved together (the
        admin's inline formset, rule-file import), as neither alone can tell.
        """
        problems: dict[str, str] = {}
        if self.tiers and not rules.tiers_problem(self.tiers):
            tiers = self.tier_list()
            if len(requirements) != 1:
                problems["tiers"] = (
                    "A badge with tiers has exactly one requirement, which the tiers grade."
                )
            else:
                [requirement] = requirements
                problem = rules.tiered_requirement_problem(
                    requirement.kind, requirement.aggregation, requirement.operator
                )
                if problem:
                    problems["tiers"] = f"Tiers need {problem}."
                elif requirement.threshold is not None and Decimal(
                    requirement.threshold
                ) != Decimal(tiers[0][1]):
                    first = format_number(tiers[0][1])
                    problems["tiers"] = (
                        f"The badge unlocks at its first tier ({tiers[0][0]}, {first}), so the "
                        f"requirement's threshold must be {first}, "
                        f"not {format_number(requirement.threshold)}."
                    )
        if self.valid_days and any(r.kind == rules.Kind.COMPOSITE for r in requirements):
            problems["valid_days"] = (
                "A badge made of other badges cannot expire: its parts' expiry decides."
            )
        if self.holds_while_met and any(r.kind == rules.Kind.COMPOSITE for r in requirements):
            problems["holds_while_met"] = (
                "A badge made of other badges cannot hold only while its rule holds: "
                "its parts decide."
            )
        if self.repeat:
            unit = rules.Scope(self.repeat)
            for number, requirement in enumerate(requirements, start=1):
                if requirement.kind != rules.Kind.AGGREGATE or requirement.aggregation in (
                    rules.Aggregation.SINGLE,
                ):
                    problems["repeat"] = (
                        f"Requirement {number}: a repeatable badge is made of counts, sums, "
                        "maxima, minima or distinct counts per period."
                    )
                    break
                if requirement.scope != unit:
                    problems["repeat"] = (
                        f"Requirement {number}: a badge earned "
                        f"{self.get_repeat_display().lower()} counts each requirement per "
                        f'{unit.value}, so set its scope to "{unit.label}".'
                    )
                    break
        return problems

    def rule(
        self,
        requirements: Sequence[BadgeRequirement] | None = None,
        *,
        version_id: int | None = None,
    ) -> core.BadgeRule:
        """The badge's rule as the evaluation core reads it (its own requirements,
        or edited ones for a preview). Kept on the instance for its own requirements."""
        if requirements is None:
            cached = self.__dict__.get("_rule")
            source = (self.tiers, self.repeat, version_id, self.valid_days, self.holds_while_met)
            if cached is not None and cached[0] == source:
                return cached[1]
            built = self.rule(list(self.requirements.all()), version_id=version_id)
            self._rule = (
                (
                    [dict(t) for t in self.tiers or []],
                    self.repeat,
                    version_id,
                    self.valid_days,
                    self.holds_while_met,
                ),
                built,
            )
            return built
        return core.BadgeRule(
            id=self.pk,
            requirements=tuple(r.spec for r in requirements),
            tiers=self.tier_list(),
            repeat=rules.Scope(self.repeat) if self.repeat else None,
            version_id=version_id,
            valid_days=self.valid_days,
            holds_while=self.holds_while_met,
        )

    def standing(
        self,
        requirements: Sequence[BadgeRequirement],
        states: dict[int, dict[str, Any]],
        now: datetime,
        time_zone: str,
        unlocked: set[int],
    ) -> Standing:
        """Where a user stands on this badge: each requirement, the whole, and the tier."""
        return core.standing(self.rule(requirements), states, now, time_zone, unlocked)

    def worded_standing(
        self,
        requirements: Sequence[BadgeRequirement],
        states: dict[int, dict[str, Any]],
        now: datetime,
        time_zone: str,
        unlocked: set[int],
        words: BadgeTranslation | None,
    ) -> Standing:
        """standing(), its texts written with staff's translated labels and tier names:
        the same rule, other words."""
        rule = self.rule(requirements)
        if words is None:
            return core.standing(rule, states, now, time_zone, unlocked)
        labels = list(words.labels or [])
        specs = tuple(
            replace(spec, label=labels[n]) if n < len(labels) and labels[n] else spec
            for n, spec in enumerate(rule.requirements)
        )
        names = list(words.tier_names or [])
        tiers = (
            tuple(
                (name or own, threshold)
                for name, (own, threshold) in zip(names, rule.tiers, strict=True)
            )
            if len(names) == len(rule.tiers)
            else rule.tiers
        )
        worded = replace(rule, requirements=specs, tiers=tiers)
        return core.standing(worded, states, now, time_zone, unlocked)


class BadgeRequirementQuerySet(models.QuerySet["BadgeRequirement"]):
    def watching(self, event_type: str) -> BadgeRequirementQuerySet:
        """Requirements of active badges that an event of `event_type` can move."""
        return self.filter(event_type=event_type, badge__is_active=True)


class BadgeRequirement(models.Model):
    """One rule of a badge, as data that staff edit in the admin.

    A badge is unlocked when every one of its requirements holds.
    """

    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="requirements")
    kind = models.CharField(
        max_length=20, choices=_choices(EVALUATED_KINDS), default=rules.Kind.AGGREGATE
    )
    event_type = models.CharField(
        max_length=rules.EVENT_TYPE_MAX_LENGTH,
        validators=[validate_event_type],
        blank=True,
        help_text="The event type this requirement watches, e.g. visit.created "
        "(sequences list theirs in steps).",
    )
    aggregation = models.CharField(
        max_length=20, choices=_choices(EVALUATED_AGGREGATIONS), default=rules.Aggregation.COUNT
    )
    field = models.CharField(
        max_length=64,
        blank=True,
        help_text="Payload field to aggregate; required for distinct counts (e.g. place_id).",
    )
    operator = models.CharField(
        max_length=4, choices=_choices(EVALUATED_OPERATORS), default=rules.Operator.GTE
    )
    threshold = models.DecimalField(
        max_digits=18,
        decimal_places=4,
        validators=[MinValueValidator(Decimal(0))],
        help_text="The value to reach: a count, a sum, a streak length, a number of steps.",
    )
    scope = models.CharField(
        max_length=20, choices=_choices(EVALUATED_SCOPES), default=rules.Scope.ALL_TIME
    )
    label = models.CharField(
        max_length=100,
        blank=True,
        help_text="What the number counts, shown to users, e.g. 'different places'.",
    )
    filters = models.JSONField(
        default=dict,
        blank=True,
        help_text='Payload conditions, e.g. {"all": [{"field": "duration_seconds", "op": ">=", '
        '"value": 600}, {"field": "source", "op": "==", "value": "mobile"}]}.',
    )
    window_days = models.PositiveIntegerField(
        default=0,
        help_text="Rolling scope: the window in days. Sequences: all steps within this many "
        "days (0: no limit).",
    )
    streak_unit = models.CharField(
        max_length=4, choices=[("day", "Days"), ("week", "Weeks")], default="day"
    )
    steps = models.JSONField(
        default=list,
        blank=True,
        help_text='Sequences: event types in order, e.g. ["profile.completed", '
        '"tutorial.finished"].',
    )
    composite_mode = models.CharField(
        max_length=3,
        choices=[("all", "All of them"), ("any", "Any of them")],
        default="all",
        help_text="Composites: whether every listed badge is needed, or one.",
    )
    composite_badges = models.ManyToManyField(
        Badge,
        blank=True,
        related_name="required_by",
        help_text="Composites: the badges this requirement is made of.",
    )

    objects = BadgeRequirementQuerySet.as_manager()

    class Meta:
        ordering = ["badge", "id"]
        indexes = [models.Index(fields=["event_type"], name="requirement_event_type")]

    def __str__(self) -> str:
        return f"{self.badge}: {self.describe()}"

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        kind = _member(rules.Kind, self.kind)
        aggregation = _member(rules.Aggregation, self.aggregation)
        if kind is rules.Kind.COMPOSITE and self.threshold is not None and self.threshold < 0:
            errors["threshold"] = "Ensure this value is greater than or equal to 0."
        if kind in (rules.Kind.AGGREGATE, rules.Kind.STREAK) and not self.event_type:
            errors["event_type"] = "Name the event type this requirement watches."
        needs_field = kind is rules.Kind.AGGREGATE and aggregation and aggregation.needs_field
        if needs_field and not self.field:
            errors["field"] = f"A {aggregation.label.lower()} requirement needs a payload field."
        if self.field and not rules.FIELD_PATTERN.match(self.field):
            errors["field"] = "Use a payload key of letters, digits and '_', e.g. place_id."
        counted = (
            kind in (rules.Kind.STREAK, rules.Kind.SEQUENCE)
            or (kind is rules.Kind.AGGREGATE)
            and aggregation
            in (
                rules.Aggregation.COUNT,
                rules.Aggregation.DISTINCT,
            )
        )
        if kind is not None and (aggregation is not None or kind is not rules.Kind.AGGREGATE):
            problem = rules.operator_problem(kind, self.aggregation, self.operator)
            if problem:
                errors["operator"] = problem
        if self.threshold is not None and counted and self.threshold < 1:
            errors["threshold"] = "A count, streak or sequence needs a threshold of at least 1."
        rolling = self.scope == rules.Scope.ROLLING and kind is rules.Kind.AGGREGATE
        if rolling and not 1 <= self.window_days <= 366:
            errors["window_days"] = "A rolling scope needs a window of 1 to 366 days."
        if kind is rules.Kind.SEQUENCE:
            steps = self.steps if isinstance(self.steps, list) else None
            if steps is None or len(steps) < 2:
                errors["steps"] = "A sequence needs at least 2 steps, in order."
            else:
                for number, step in enumerate(steps, start=1):
                    problem = rules.event_type_problem(step)
                    if problem:
                        errors["steps"] = f"Step {number}: event type {problem}."
                        break
        try:
            payload_filter = rules.Filter.from_data(self.filters)
        except ValueError as exc:
            errors["filters"] = f"Filter: {exc}."
        else:
            candidates = self.steps if kind is rules.Kind.SEQUENCE else [self.event_type]
            watched = [
                t
                for t in (candidates if isinstance(candidates, list) else [])
                if isinstance(t, str) and not rules.event_type_problem(t)
            ]
            numeric_field = bool(needs_field and aggregation and aggregation.needs_number)
            if watched and (payload_filter.terms or numeric_field):
                problems = rules.type_problems(
                    payload_filter, aggregation, self.field, payload_field_types(watched)
                )
                for name, message in problems.items():
                    errors.setdefault(name, message)
        if errors:
            raise ValidationError(errors)

    @cached_property
    def spec(self) -> Spec:
        """The requirement as plain data for the core (built once per instance)."""
        kind = rules.Kind(self.kind)
        parts = (
            tuple(badge.pk for badge in self.composite_badges.all())
            if kind is rules.Kind.COMPOSITE and self.pk is not None
            else ()
        )
        return Spec(
            id=self.pk,
            threshold=Decimal(self.threshold),
            kind=kind,
            event_type=self.event_type,
            aggregation=rules.Aggregation(self.aggregation),
            field=self.field,
            operator=rules.Operator(self.operator),
            scope=rules.Scope(self.scope),
            window_days=self.window_days,
            streak_unit=self.streak_unit,
            steps=tuple(self.steps) if kind is rules.Kind.SEQUENCE else (),
            filter=rules.Filter.from_data(self.filters),
            label=self.label,
            composite_mode=self.composite_mode,
            parts=parts,
        )

    def watched_types(self) -> list[str]:
        if self.kind == rules.Kind.SEQUENCE:
            return list(dict.fromkeys(self.steps))
        if self.kind == rules.Kind.COMPOSITE:
            return []  # moved by other badges' unlocks, not by events
        return [self.event_type]

    def describe(self) -> str:
        """A short human reading of the rule, e.g. '5 distinct place_id of visit.created'."""
        threshold = format_number(self.threshold)
        if self.aggregation == rules.Aggregation.DISTINCT:
            return f"{threshold} distinct {self.field} of {self.event_type}"
        return f"{threshold} × {self.event_type}"

    def unit_label(self) -> str:
        return unit_name(self.spec)


def accepted_event_types() -> set[str]:
    """Catalogued types, and every type a rule watches (sequences watch their steps)."""
    watched: set[str] = set()
    for event_type, steps in BadgeRequirement.objects.values_list("event_type", "steps"):
        watched.add(event_type)
        if isinstance(steps, list):
            watched.update(step for step in steps if isinstance(step, str))
    watched.discard("")
    return (
        set(EventType.objects.values_list("name", flat=True))
        | watched
        | set(DedupRule.objects.values_list("event_type", flat=True))
    )


class BadgeTranslation(models.Model):
    """A badge's words in another language, written by staff: its name, description,
    tier names and requirement labels. Cards, toasts and the public pages use
    them for readers in that language; anything left empty stays as written on
    the badge.

    Its own rows rather than a column per language on Badge: the badge's own
    fields stay what rule files, versions and the API read, whatever language a
    process has active, and a language is added without a migration.
    """

    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="translations")
    language = models.CharField(max_length=8, choices=settings.LANGUAGES)
    name = models.CharField(max_length=100, blank=True)
    description = models.TextField(blank=True)
    tier_names = models.JSONField(
        default=list,
        blank=True,
        help_text='The tiers\' names, lowest first, e.g. ["Bronze", "Argent", "Or"].',
    )
    labels = models.JSONField(
        default=list,
        blank=True,
        help_text="The requirements' labels, in the order of the requirements below.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["badge", "language"], name="one_translation_per_language"
            )
        ]
        ordering = ["language"]

    def __str__(self) -> str:
        return f"{self.badge} ({self.language})"

    def clean(self) -> None:
        super().clean()
        for field in ("tier_names", "labels"):
            value = getattr(self, field)
            if value is None:
                setattr(self, field, [])
            elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValidationError({field: 'Give a list of names, e.g. ["Bronze", "Argent"].'})
        try:
            badge = self.badge  # in the admin, the badge being saved alongside
        except Badge.DoesNotExist:
            badge = None
        if badge is not None and self.tier_names:
            tiers = len(badge.tier_list())
            if not tiers:
                raise ValidationError(
                    {"tier_names": "This badge has no tiers: leave the tier names empty."}
                )
            if len(self.tier_names) != tiers:
                raise ValidationError(
                    {"tier_names": f"Give one name per tier: the badge has {tiers}."}
                )


def translation_of(badge: Badge, language: str | None) -> BadgeTranslation | None:
    """The badge's words in `language` (prefetched `translations`), if staff wrote them."""
    if not language:
        return None
    code = language.split("-")[0]
    for translation in badge.translations.all():
        if translation.language == code:
            return translation
    return None
