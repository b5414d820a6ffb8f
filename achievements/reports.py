"""Reports for product people: unlocks over time, rarity, near misses.

Plain functions from filters to rows, so the page, its CSV exports and the
tests read the same numbers. Charts are server-rendered SVG (no script).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
)
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString

from achievements import rollups
from achievements.models import (
    Badge,
    Entry,
    Event,
    LedgerEntry,
    Unlock,
    UserBadge,
    progress_share,
)
from project.inputs import date_problem, text_problem

MAX_RANGE_DAYS = 366
NEAR_MISS_LIMIT = 200
# Longer than any date, unit or number of days the filters take.
FILTER_MAX_LENGTH = 32


@dataclass(frozen=True)
class Filters:
    start: date
    end: date  # inclusive
    badge: Badge | None
    unit: str  # "day" or "week"
    quiet_days: int = 7  # rule health: an event type silent this long is flagged

    @property
    def since(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.start, time.min))

    @property
    def before(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.end + timedelta(days=1), time.min))

    def query(self, **extra: str) -> str:
        from urllib.parse import urlencode

        params = {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "unit": self.unit,
            "quiet": str(self.quiet_days),
        }
        if self.badge:
            params["badge"] = self.badge.key
        params.update(extra)
        return urlencode(params)


def parse_filters(params: Any, *, today: date | None = None) -> tuple[Filters, dict[str, str]]:
    """Filters from the query string, with a message per bad field (defaults stand in).

    Every value goes through the shared checks first: no NUL character (which
    PostgreSQL refuses), no length past what the field can hold, and dates
    within the range the day arithmetic below stays inside Python's calendar.
    """
    today = today or timezone.localdate()
    errors: dict[str, str] = {}

    def text(name: str, default: str, *, max_length: int | None = FILTER_MAX_LENGTH) -> str | None:
        raw = params.get(name, default)
        problem = text_problem(raw, max_length=max_length)
        if problem:
            errors[name] = problem
            return None
        return raw

    def day(name: str, default: date) -> date:
        raw = text(name, "")
        if not raw:
            return default
        try:
            parsed = parse_date(raw)
        except ValueError:
            parsed = None
        if parsed is None:
            errors[name] = f"{raw!r} is not a date; use YYYY-MM-DD."
            return default
        problem = date_problem(parsed)
        if problem:
            errors[name] = problem
            return default
        return parsed

    end = day("end", today)
    start = day("start", end - timedelta(days=29))
    if start > end:
        errors["start"] = "The start must be on or before the end."
        start = end - timedelta(days=29)
    if (end - start).days >= MAX_RANGE_DAYS:
        errors["start"] = f"Choose at most {MAX_RANGE_DAYS} days."
        start = end - timedelta(days=MAX_RANGE_DAYS - 1)
    unit = text("unit", "day")
    if unit is None:
        unit = "day"
    elif unit not in ("day", "week"):
        errors["unit"] = "Choose day or week."
        unit = "day"
    quiet = text("quiet", "") or "7"
    if not (quiet.isascii() and quiet.isdigit()) or not 1 <= int(quiet) <= MAX_RANGE_DAYS:
        errors["quiet"] = f"Quiet days must be a whole number from 1 to {MAX_RANGE_DAYS}."
        quiet = "7"
    badge = None
    key = text("badge", "", max_length=Badge._meta.get_field("key").max_length)
    if key:
        badge = Badge.objects.filter(key=key).first()
        if badge is None:
            errors["badge"] = f"No badge with key {key!r}."
    return Filters(start, end, badge, unit, int(quiet)), errors


def unlocks_over_time(filters: Filters) -> list[dict[str, Any]]:
    """Unlocks per day or week in the range (every earning counts), the running total,
    and the earnings revoked and expired in each."""
    per_day = rollups.unlocks_per_day(
        filters.start, filters.end, filters.badge.pk if filters.badge else None
    )
    step = timedelta(days=1 if filters.unit == "day" else 7)

    def bucket(day: date) -> date:
        return day - timedelta(days=day.weekday()) if filters.unit == "week" else day

    buckets: Counter[date] = Counter()
    for day, n in per_day.items():
        buckets[bucket(day)] += n
    # Earnings that ended, beside them: from the ledger (its kind-and-time index).
    endings: dict[str, Counter[date]] = {
        Entry.REVOKED: Counter(),
        Entry.LAPSED: Counter(),
        Entry.EXPIRED: Counter(),
    }
    ended = LedgerEntry.objects.filter(
        kind__in=list(endings), at__gte=filters.since, at__lt=filters.before
    )
    if filters.badge:
        ended = ended.filter(badge=filters.badge)
    for day, kind, n in (
        ended.annotate(day=TruncDate("at", tzinfo=timezone.get_current_timezone()))
        .order_by()
        .values("day", "kind")
        .annotate(n=Count("*"))
        .values_list("day", "kind", "n")
    ):
        endings[kind][bucket(day)] += n
    rows, running = [], 0
    current = filters.start
    if filters.unit == "week":
        current -= timedelta(days=current.weekday())
    while current <= filters.end:
        n = buckets.get(current, 0)
        running += n
        rows.append(
            {
                "period": current,
                "unlocks": n,
                "cumulative": running,
                "revoked": endings[Entry.REVOKED].get(current, 0),
                # Badges held while their rule holds, lost when it stopped.
                "lost": endings[Entry.LAPSED].get(current, 0),
                "expired": endings[Entry.EXPIRED].get(current, 0),
            }
        )
        current += step
    return rows


def active_users(filters: Filters) -> int:
    """Users with at least one event received in the range (from the daily roll-ups)."""
    return rollups.activity(filters.start, filters.end).active_users


def rarity(
    filters: Filters, *, sort: str = "percent", active: int | None = None
) -> list[dict[str, Any]]:
    """Holders of each badge (and each tier) at the end of the range, as % of active users."""
    if active is None:
        active = active_users(filters)
    badges = Badge.objects.active()
    if filters.badge:
        badges = badges.filter(pk=filters.badge.pk)
    held = UserBadge.objects.filter(
        badge__in=badges, completed_at__isnull=False, completed_at__lt=filters.before
    )
    # One pass over the userbadge_holders index: holders per badge and tier.
    plain: Counter[int] = Counter()
    tiers: dict[int, Counter[int]] = defaultdict(Counter)
    for badge_id, tier, n in (
        held.values("badge_id", "tier").annotate(n=Count("*")).values_list("badge_id", "tier", "n")
    ):
        plain[badge_id] += n
        tiers[badge_id][tier] = n
    rows = []
    for badge in badges:
        levels = badge.tier_list()
        if levels:
            for level, (name, _) in enumerate(levels, start=1):
                # Holding Silver means holding Bronze too.
                n = sum(count for tier, count in tiers[badge.pk].items() if tier >= level)
                rows.append(_rarity_row(badge, name, n, active))
        else:
            rows.append(_rarity_row(badge, "", plain.get(badge.pk, 0), active))
    key = {
        "percent": lambda row: (row["percent"], row["badge"]),
        "badge": lambda row: (row["badge"], row["tier"]),
        "holders": lambda row: (row["holders"], row["badge"]),
    }.get(sort.lstrip("-"), lambda row: (row["percent"], row["badge"]))
    return sorted(rows, key=key, reverse=sort.startswith("-"))


def _rarity_row(badge: Badge, tier: str, holders: int, active: int) -> dict[str, Any]:
    percent = round(100 * holders / active, 1) if active else 0.0
    return {
        "badge": badge.name,
        "key": badge.key,
        "tier": tier,
        "holders": holders,
        "active_users": active,
        "percent": percent,
    }


def near_misses(filters: Filters) -> list[dict[str, Any]]:
    """Users at 80-99 % of a badge they do not hold, closest first."""
    # The share matches the userbadge_share index, which hands over the nearest
    # misses first; the closest are picked before joining users and badges.
    closest = (
        UserBadge.objects.filter(completed_at__isnull=True, target_value__gt=0)
        .annotate(share=progress_share())
        .filter(share__gte=0.8, share__lt=1, badge__is_active=True)
        .filter(Q(last_evaluated_at__isnull=True) | Q(last_evaluated_at__lt=filters.before))
        .order_by("-share", "pk")
    )
    if filters.badge:
        closest = closest.filter(badge=filters.badge)
    picked = list(closest.values_list("pk", flat=True)[:NEAR_MISS_LIMIT])
    result = []
    for user_badge in UserBadge.objects.filter(pk__in=picked).select_related("user", "badge"):
        percent = int(user_badge.current_value * 100 / user_badge.target_value)
        result.append(
            {
                "user": user_badge.user.get_username(),
                "badge": user_badge.badge.name,
                "percent": percent,
                "current": user_badge.current_value.normalize(),
                "target": user_badge.target_value.normalize(),
            }
        )
    return sorted(result, key=lambda row: (-row["percent"], row["badge"], row["user"]))


def _nice_ticks(peak: float, most: int = 4) -> list[int]:
    """Round scale marks from 0 to at least `peak`: steps of 1, 2 or 5 times a power
    of ten, at most `most` steps (0, 5, 10, 15 rather than 0, 3.75, 7.5, 11.25)."""
    peak = max(peak, 1)
    power = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * power
            if step * most >= peak:
                return list(range(0, step * math.ceil(peak / step) + 1, step))
        power *= 10


def chart(rows: list[dict[str, Any]], *, unit: str) -> SafeString:
    """Unlocks per period as bars on the left scale, the running total as a line on
    the right one, with dated marks below: inline SVG, a tooltip on each bar, and
    the same figures as a table beside it in the page."""
    if not rows:
        return format_html("<p>No periods in range.</p>")
    width, height = 720, 280
    left, right, top, bottom = 48, 56, 34, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    bar_ticks = _nice_ticks(max(row["unlocks"] for row in rows))
    total_ticks = _nice_ticks(rows[-1]["cumulative"])
    bar_max, total_max = bar_ticks[-1], total_ticks[-1]
    step = plot_w / len(rows)
    base = top + plot_h

    def y(value: float, scale: int) -> str:
        return f"{base - plot_h * value / scale:.1f}"

    parts: list[str] = []
    for tick in bar_ticks:  # gridlines and the left scale
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"/>'
                '<text x="{}" y="{}" class="tick" text-anchor="end">{}</text>',
                left,
                left + plot_w,
                y(tick, bar_max),
                y(tick, bar_max),
                left - 6,
                f"{float(y(tick, bar_max)) + 4:.1f}",
                f"{tick:,}",
            )
        )
    for tick in total_ticks:  # the right scale, for the line
        parts.append(
            format_html(
                '<text x="{}" y="{}" class="tick total">{}</text>',
                left + plot_w + 6,
                f"{float(y(tick, total_max)) + 4:.1f}",
                f"{tick:,}",
            )
        )
    for i, row in enumerate(rows):
        parts.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" class="bar">'
                "<title>{} {}: {} unlock{}, {} in all</title></rect>",
                f"{left + i * step + step * 0.12:.1f}",
                y(row["unlocks"], bar_max),
                f"{max(step * 0.76, 1):.1f}",
                f"{plot_h * row['unlocks'] / bar_max:.1f}",
                unit.capitalize(),
                row["period"].isoformat(),
                f"{row['unlocks']:,}",
                "" if row["unlocks"] == 1 else "s",
                f"{row['cumulative']:,}",
            )
        )
    # Dated marks: at most eight, evenly spaced, the last period always among them.
    every = max(1, math.ceil(len(rows) / 8))
    marked = sorted({*range(len(rows) - 1, -1, -every)})
    for i in marked:
        x = left + (i + 0.5) * step
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" class="axis"/>'
                '<text x="{}" y="{}" class="tick" text-anchor="middle">{}</text>',
                f"{x:.1f}",
                f"{x:.1f}",
                base,
                base + 4,
                f"{x:.1f}",
                base + 18,
                date_format(rows[i]["period"], "M j"),
            )
        )
    points = " ".join(
        f"{left + (i + 0.5) * step:.1f},{y(row['cumulative'], total_max)}"
        for i, row in enumerate(rows)
    )
    peak = max(row["unlocks"] for row in rows)
    label = (
        f"Unlocks per {unit} from {rows[0]['period']} to {rows[-1]['period']}: "
        f"{rows[-1]['cumulative']:,} in all, at most {peak:,} in one {unit}. "
        "The figures are in the table below."
    )
    first, last = rows[0]["period"].year, rows[-1]["period"].year
    years = str(first) if first == last else f"{first}–{last}"
    return format_html(
        '<div class="report-chart-scroll" role="region" tabindex="0" aria-label="{}">'
        '<svg class="report-chart" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        '<rect x="{}" y="10" width="10" height="10" class="bar"/>'
        '<text x="{}" y="19" class="legend">Unlocks per {} (left scale)</text>'
        '<line x1="{}" x2="{}" y1="15" y2="15" class="cumulative"/>'
        '<text x="{}" y="19" class="legend">Running total (right scale)</text>'
        "{}"
        '<line x1="{}" x2="{}" y1="{}" y2="{}" class="axis"/>'
        '<polyline points="{}" class="cumulative"/>'
        '<text x="{}" y="{}" class="tick" text-anchor="end">{}</text>'
        "</svg></div>",
        f"Chart of unlocks per {unit}",
        width,
        height,
        label,
        left,
        left + 16,
        unit,
        left + 236,
        left + 258,
        left + 264,
        SafeString("".join(parts)),
        left,
        left + plot_w,
        base,
        base,
        points,
        left + plot_w,
        base + 36,
        years,
    )


SAMPLE_LIMIT = 10_000


def _percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (PostgreSQL's percentile_disc)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _span(end: str, start: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(end) - F(start), output_field=DurationField())


def _percentiles(
    sample: QuerySet[Any], shares: tuple[float, ...] = (0.5, 0.95)
) -> list[float | None]:
    """Nearest-rank percentiles, in seconds, of the `span` each row of `sample` is
    annotated with; computed by the database on PostgreSQL."""
    if connection.vendor == "postgresql":
        result = sample.aggregate(
            **{f"p{n}": _PercentileDisc("span", share=share) for n, share in enumerate(shares)}
        )
        return [
            None if value is None else value.total_seconds()
            for value in (result[f"p{n}"] for n in range(len(shares)))
        ]
    spans = [span.total_seconds() for span in sample.values_list("span", flat=True) if span]
    return [_percentile(spans, share) for share in shares]


def pipeline_health(
    filters: Filters, *, activity: rollups.Activity | None = None
) -> list[dict[str, Any]]:
    """How the pipeline behaves in the range: volume, lag, latency, duplicates, failures."""
    from achievements import metrics

    events = Event.objects.filter(received_at__gte=filters.since, received_at__lt=filters.before)
    if activity is None:
        activity = rollups.activity(filters.start, filters.end)
    received = activity.events
    minutes = max(1.0, (min(filters.before, timezone.now()) - filters.since).total_seconds() / 60)
    lag_p50, lag_p95 = _percentiles(
        events.filter(processed_at__isnull=False)
        .annotate(span=_span("processed_at", "received_at"))
        .order_by("-received_at")[:SAMPLE_LIMIT]
    )
    # The latest unlocks in the range (a bounded read: the index on unlocked_at, in
    # order, up to SAMPLE_LIMIT), and among them the live ones: made by the
    # evaluation that first took their deciding event, in its transaction (the
    # same moment). A re-evaluation's or a replay's unlock, a composite's, or one
    # a late event's refold moved to an older event would measure how old the
    # history is, not how fast the pipeline is.
    latest = Unlock.objects.filter(
        pk__in=Unlock.objects.filter(
            unlocked_at__gte=filters.since, unlocked_at__lt=filters.before
        )
        .order_by("-unlocked_at")
        .values("pk")[:SAMPLE_LIMIT]
    )
    is_live = Q(event__isnull=False, unlocked_at=F("event__processed_at"))
    pushed = is_live & Q(delivered_at__isnull=False)
    sample = latest.annotate(span=_span("delivered_at", "event__received_at"))
    counts = {"total": Count("pk"), "live": Count("pk", filter=is_live)}
    if connection.vendor == "postgresql":  # one read for the counts and the percentiles
        counted = sample.aggregate(
            **counts,
            p50=_PercentileDisc("span", share=0.5, filter=pushed),
            p95=_PercentileDisc("span", share=0.95, filter=pushed),
        )
        latency_p50, latency_p95 = (
            None if counted[p] is None else counted[p].total_seconds() for p in ("p50", "p95")
        )
    else:
        counted = latest.aggregate(**counts)
        latency_p50, latency_p95 = _percentiles(sample.filter(pushed))
    try:
        counters = metrics._read()
    except Exception:
        counters = {}
    accepted = counters.get("accolade_events_received_total", 0)
    duplicates = counters.get("accolade_events_deduplicated_total", 0)
    try:
        depth = metrics.queue_depth()
    except Exception:
        depth = None

    rows = [
        ("Events received in the range", f"{received:,}"),
        ("Event rate (average over the range)", _rate(received, minutes)),
        ("Processing lag p50 (received → evaluated)", _seconds(lag_p50)),
        ("Processing lag p95", _seconds(lag_p95)),
        ("Unlock latency p50 (live unlocks: event received → pushed)", _seconds(latency_p50)),
        ("Unlock latency p95 (live unlocks)", _seconds(latency_p95)),
        (
            "Unlocks not counted as live (re-evaluation, replay, composites)",
            f"{counted['total'] - counted['live']:,} of {counted['total']:,}",
        ),
        (
            "Duplicate rate (since the counters started)",
            f"{100 * duplicates / (accepted + duplicates):.1f} %"
            if accepted + duplicates
            else "—",
        ),
        ("Events waiting for evaluation now", f"{Event.objects.unprocessed().count()}"),
        ("Dead-lettered events now", f"{Event.objects.dead_lettered().count()}"),
        ("Task messages queued now", "— (embedded mode)" if depth is None else f"{depth}"),
    ]
    return [{"measure": name, "value": value} for name, value in rows]


def rule_health(filters: Filters) -> list[dict[str, Any]]:
    """Badges that look broken: earned by no one, counting silent event types, or swinging."""
    badges = list(
        Badge.objects.active()
        .annotate(awarded=Exists(Unlock.objects.filter(badge=OuterRef("pk"))))
        .prefetch_related("requirements")
    )
    if filters.badge:
        badges = [badge for badge in badges if badge.pk == filters.badge.pk]
    awarded = {badge.pk for badge in badges if badge.awarded}
    watched = {t for badge in badges for r in badge.requirements.all() for t in r.watched_types()}
    # The latest event of each type: one index lookup per type, not a scan.
    last_seen = {
        event_type: last
        for event_type in watched
        if (
            last := Event.objects.filter(event_type=event_type)
            .order_by("-occurred_at")
            .values_list("occurred_at", flat=True)
            .first()
        )
    }
    quiet_since = filters.before - timedelta(days=filters.quiet_days)
    week = timedelta(days=7)
    recent = _unlock_counts(filters.before - week, filters.before)
    earlier = _unlock_counts(filters.before - 2 * week, filters.before - week)
    rows = []
    for badge in badges:
        if badge.pk not in awarded:
            rows.append({"badge": badge.name, "problem": "No one has earned it yet."})
        for event_type in sorted({t for r in badge.requirements.all() for t in r.watched_types()}):
            last = last_seen.get(event_type)
            if last is None:
                problem = f"It counts {event_type} events, and none has arrived yet."
            elif last < quiet_since:
                problem = (
                    f"It counts {event_type} events, and none has arrived since "
                    f"{date_format(timezone.localdate(last), 'DATE_FORMAT')}."
                )
            else:
                continue
            rows.append({"badge": badge.name, "problem": problem})
        now, before = recent.get(badge.pk, 0), earlier.get(badge.pk, 0)
        # A change against a small base is noise, and a badge younger than the two
        # weeks compared has no "before" to compare with.
        compared = before >= SPIKE_BASE and badge.created_at <= filters.before - 2 * week
        if compared and (now >= 2 * before or 2 * now <= before):
            change = "more than doubled" if now > before else "fell by half or more"
            rows.append(
                {
                    "badge": badge.name,
                    "problem": f"Its unlocks {change}: {now:,} in the last 7 days, "
                    f"{before:,} in the 7 days before.",
                }
            )
    return rows


def _unlock_counts(since: datetime, before: datetime) -> dict[int, int]:
    return dict(
        Unlock.objects.filter(unlocked_at__gte=since, unlocked_at__lt=before)
        .values("badge_id")
        .annotate(n=Count("*"))
        .values_list("badge_id", "n")
    )


def tier_funnel(filters: Filters) -> list[dict[str, Any]]:
    """For each tiered badge: users who started, then who reached each tier, step by step."""
    badges = [badge for badge in Badge.objects.active() if badge.tier_list()]
    if filters.badge:
        badges = [badge for badge in badges if badge.pk == filters.badge.pk]
    # One pass: per badge and tier, who has any progress and who holds it.
    started: Counter[int] = Counter()
    levels: dict[int, Counter[int]] = defaultdict(Counter)
    for badge_id, tier, begun, held in (
        UserBadge.objects.filter(badge__in=badges, last_evaluated_at__lt=filters.before)
        .values("badge_id", "tier")
        .annotate(
            begun=Count("pk", filter=Q(current_value__gt=0)),
            held=Count("pk", filter=Q(tier__gt=0, completed_at__lt=filters.before)),
        )
        .values_list("badge_id", "tier", "begun", "held")
    ):
        started[badge_id] += begun
        if held:
            levels[badge_id][tier] = held
    rows = []
    for badge in badges:
        previous = started.get(badge.pk, 0)
        rows.append({"badge": badge.name, "step": "Started", "users": previous, "of_previous": ""})
        for level, (name, _) in enumerate(badge.tier_list(), start=1):
            reached = sum(n for tier, n in levels[badge.pk].items() if tier >= level)
            share = f"{100 * reached / previous:.0f} %" if previous else "—"
            rows.append(
                {"badge": badge.name, "step": name, "users": reached, "of_previous": share}
            )
            previous = reached
    return rows


def time_to_unlock(filters: Filters) -> list[dict[str, Any]]:
    """Per badge, for first unlocks in the range: the time from the user's first
    qualifying event (one that passed a requirement's type and filters) to the
    event that unlocked it, as recorded on the unlock (`Unlock.took`); median and p90."""
    badges = list(Badge.objects.active())
    if filters.badge:
        badges = [badge for badge in badges if badge.pk == filters.badge.pk]
    firsts = Unlock.objects.filter(
        badge__in=badges,
        unlocked_at__gte=filters.since,
        unlocked_at__lt=filters.before,
        tier__lte=1,  # a tiered badge's first tier; repeatable badges record only the first
        took__isnull=False,
    )
    stats: dict[int, tuple[int, float | None, float | None]] = {}
    if connection.vendor == "postgresql":
        for badge_id, n, middle, high in (
            firsts.values("badge_id")
            .annotate(
                n=Count("*"),
                median=_PercentileDisc("took", share=0.5),
                p90=_PercentileDisc("took", share=0.9),
            )
            .values_list("badge_id", "n", "median", "p90")
        ):
            stats[badge_id] = (n, middle.total_seconds(), high.total_seconds())
    else:
        spans: dict[int, list[float]] = defaultdict(list)
        for badge_id, took in firsts.values_list("badge_id", "took"):
            if took is not None:
                spans[badge_id].append(took.total_seconds())
        for badge_id, values in spans.items():
            stats[badge_id] = (len(values), _percentile(values, 0.5), _percentile(values, 0.9))
    rows = []
    for badge in badges:
        n, median, p90 = stats.get(badge.pk, (0, None, None))
        rows.append(
            {"badge": badge.name, "unlocks": n, "median": _duration(median), "p90": _duration(p90)}
        )
    return rows


class _PercentileDisc(Aggregate):
    """PostgreSQL's nearest-rank percentile of an ordered set (here, of durations)."""

    function = "PERCENTILE_DISC"
    template = "%(function)s(%(share)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = DurationField()

    def __init__(self, expression: str, *, share: float, filter: Q | None = None) -> None:
        super().__init__(expression, share=float(share), filter=filter)


# Unlocks a badge needs in the earlier week before a change in the next counts.
SPIKE_BASE = 10


def _seconds(value: float | None) -> str:
    """A lag or a latency as a person reads it: 0.042 s, 3.4 s, 45 s, 12 min."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.2g} s" if value >= 0.001 else "under 1 ms"
    return _duration(value)


def _rate(count: int, minutes: float) -> str:
    """An average rate in the largest unit that keeps it at least one: 1,200 a
    minute, 4.5 an hour, 2 a day."""
    if count == 0:
        return "none"
    for per, unit in ((1, "minute"), (60, "hour"), (1440, "day")):
        rate = count / minutes * per
        if rate >= 1:
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}".removesuffix(".0")
            return f"{shown} an {unit}" if unit == "hour" else f"{shown} a {unit}"
    return "under 1 a day"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
