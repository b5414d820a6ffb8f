"""One badge per rule kind, each watching its own event types, and a stream of
events that earns each exactly as EXPECTED says: shared by the end-to-end test
through the real topology and the batch engine's equivalence test."""

from __future__ import annotations

from datetime import UTC, datetime

MONDAY = datetime(2026, 11, 2, 12, tzinfo=UTC)  # ISO week 45


def aggregate(event_type: str, threshold: int | float, **extra: object) -> dict:
    return {"event_type": event_type, "threshold": str(threshold), **extra}


def badge(key: str, *requirements: dict, **extra: object) -> dict:
    # Only the test's user sees these (a group segment), so other tests' pages do not change.
    extra.setdefault("segment", {"group": "rule-kinds"})
    return {
        "key": key,
        "name": key.replace("_", " ").title(),
        **extra,
        "requirements": list(requirements),
    }


BADGES = [
    badge("k_count", aggregate("k.count", 3)),
    badge(
        "k_sum",
        aggregate(
            "k.run",
            10,
            aggregation="sum",
            field="km",
            filters={"all": [{"field": "source", "op": "==", "value": "watch"}]},
        ),
    ),
    badge("k_max", aggregate("k.run", 6, aggregation="max", field="km")),
    badge("k_min", aggregate("k.lap", 30, aggregation="min", field="seconds", operator="<=")),
    badge("k_single", aggregate("k.run", 5.5, aggregation="single", field="km", operator=">")),
    badge("k_distinct", aggregate("k.visit", 3, aggregation="distinct", field="place")),
    badge("k_day", aggregate("k.day", 2, scope="day")),
    badge("k_week", aggregate("k.week", 2, scope="week")),
    badge("k_month", aggregate("k.month", 2, scope="month")),
    badge("k_rolling", aggregate("k.roll", 2, scope="rolling", window_days=3)),
    badge("k_streak", {"kind": "streak", "event_type": "k.lesson", "threshold": "3"}),
    badge(
        "k_sequence",
        {
            "kind": "sequence",
            "threshold": "3",
            "steps": ["k.signup", "k.tutorial", "k.project"],
            "window_days": 7,
        },
    ),
    badge(
        "k_composite",
        {
            "kind": "composite",
            "threshold": "0",
            "composite_mode": "all",
            "composite_badges": ["k_sequence", "k_streak"],
        },
    ),
    badge(
        "k_tiers",
        aggregate("k.tier", 2),
        tiers=[
            {"name": "Bronze", "threshold": 2},
            {"name": "Silver", "threshold": 4},
            {"name": "Gold", "threshold": 10},
        ],
    ),
    badge("k_repeat", aggregate("k.repeat", 2, scope="week"), repeat="week"),
    badge("k_hidden", aggregate("k.secret", 1), hidden=True),
    badge("k_segment", aggregate("k.count", 1), segment={"attribute": "plan", "value": "pro"}),
]

# (event type, day after MONDAY, payload)
EVENTS = [
    *[("k.count", 0, {})] * 3,
    ("k.run", 0, {"km": 6, "source": "watch"}),
    ("k.run", 1, {"km": 5, "source": "phone"}),
    ("k.run", 2, {"km": 4, "source": "watch"}),
    ("k.lap", 0, {"seconds": 45}),
    ("k.lap", 1, {"seconds": 28}),
    *[("k.visit", day, {"place": place}) for day, place in [(0, 1), (1, 2), (2, 2), (3, 3)]],
    ("k.day", 0, {}),
    ("k.day", 0.2, {}),
    ("k.week", 0, {}),
    ("k.week", 6, {}),  # Sunday: the same week
    ("k.month", 1, {}),
    ("k.month", 18, {}),
    ("k.roll", 0, {}),
    ("k.roll", 4, {}),
    ("k.roll", 5, {}),
    *[("k.lesson", day, {}) for day in (0, 2, 1)],  # the gap is filled last
    ("k.signup", 0, {}),
    ("k.tutorial", 1, {}),
    ("k.project", 2, {}),
    *[("k.tier", day, {}) for day in range(4)],
    *[("k.repeat", day, {}) for day in (0, 1, 7, 8, 14)],  # weeks 45 and 46 twice, 47 once
    ("k.secret", 0, {}),
]

EXPECTED = sorted(
    [
        *[
            (key, "", 0)
            for key in [
                "k_count",
                "k_sum",
                "k_max",
                "k_min",
                "k_single",
                "k_distinct",
                "k_day",
                "k_week",
                "k_month",
                "k_rolling",
                "k_streak",
                "k_sequence",
                "k_composite",
                "k_hidden",
            ]
        ],
        ("k_tiers", "", 1),
        ("k_tiers", "", 2),
        ("k_repeat", "2026-W45", 0),
        ("k_repeat", "2026-W46", 0),
    ]
)
