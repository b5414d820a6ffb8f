"""Every rule kind through the production topology: the HTTP API, a Celery worker, PostgreSQL,
Redis and Daphne, with a real WebSocket client receiving the toasts.

One user, one badge per kind (watching its own event types, so the cases do not
interfere), events posted in one batch in shuffled order; then the unlocks
written by the worker and the toasts pushed to the socket must both be exactly
the expected ones.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import websockets

from tests.integration.stack import SignedInClient

pytestmark = pytest.mark.topology

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


def test_every_rule_kind_unlocks_through_the_worker_and_is_toasted(topology_site, tmp_path):
    site = topology_site
    rules = tmp_path / "kinds.json"
    rules.write_text(json.dumps({"format": "accolade-badges", "version": 1, "badges": BADGES}))
    key = (
        site.python(
            f"""
import json
from django.contrib.auth import get_user_model
from django.core.management import call_command
from achievements.models import ExternalIdentity
from api.models import ApiKey
from tests.integration.stack import DEMO_PASSWORD
from django.contrib.auth.models import Group
user = get_user_model().objects.create_user("kinds", password=DEMO_PASSWORD)
user.groups.add(Group.objects.create(name="rule-kinds"))
ExternalIdentity.objects.create(external_id="kinds-1", user=user)
call_command("import_badges", {str(rules)!r})
print(ApiKey.issue("rule-kinds-test")[1])
"""
        )
        .strip()
        .splitlines()[-1]
    )
    client = SignedInClient(site.base_url, "kinds")
    events = [
        {
            "event_id": f"kinds-{number}",
            "user_id": "kinds-1",
            "event_type": event_type,
            "occurred_at": (MONDAY + timedelta(days=day)).isoformat(),
            "payload": payload,
        }
        for number, (event_type, day, payload) in enumerate(EVENTS)
    ]
    random.Random(7).shuffle(events)

    async def scenario() -> list[str]:
        url = site.base_url.replace("http://", "ws://") + "/ws/live/"
        headers = {"Cookie": client.cookie_header, "Origin": site.base_url}
        frames: list[str] = []
        async with websockets.connect(url, additional_headers=headers) as socket:
            response = await asyncio.to_thread(
                httpx.post,
                f"{site.base_url}/api/v1/events",
                json={"events": events},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 202, response.text
            statuses = {result["status"] for result in response.json()["results"]}
            assert statuses == {"accepted"}, response.text
            deadline = time.monotonic() + 60
            toasts: set[str] = set()
            while len(toasts) < len(EXPECTED) and time.monotonic() < deadline:
                try:
                    frame = str(await asyncio.wait_for(socket.recv(), timeout=5))
                except TimeoutError:
                    continue
                frames.append(frame)
                toasts |= set(re.findall(r'data-unlock-id="(\d+)"', frame))
            # Anything extra would arrive now.
            with pytest.raises(TimeoutError):
                while True:
                    frames.append(str(await asyncio.wait_for(socket.recv(), timeout=2)))
                    toasts |= set(re.findall(r'data-unlock-id="(\d+)"', frames[-1]))
                    assert len(toasts) <= len(EXPECTED), "a toast was pushed twice"
        return frames

    try:
        frames = asyncio.run(scenario())
    except Exception:
        print(site.logs())
        raise
    finally:
        client.close()
    stored = json.loads(
        site.python(
            "import json; from achievements.models import Unlock; print(json.dumps(sorted("
            "Unlock.objects.filter(user__username='kinds')"
            ".values_list('badge__key', 'period', 'tier'))))"
        ).splitlines()[-1]
    )
    assert sorted(tuple(row) for row in stored) == EXPECTED
    text = "".join(frames)
    toasts = set(re.findall(r'data-unlock-id="(\d+)"', text))
    assert len(toasts) == len(EXPECTED)
    assert "Silver tier reached: <strong>K Tiers</strong>" in text
    assert "Earned again (2 times): <strong>K Repeat</strong>" in text
    assert "K Segment" not in text  # outside the user's segment: neither shown nor evaluated
