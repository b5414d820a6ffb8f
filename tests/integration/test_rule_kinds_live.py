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
from datetime import timedelta

import httpx
import pytest
import websockets

from tests.integration.stack import SignedInClient
from tests.rule_kinds import BADGES, EVENTS, EXPECTED, MONDAY

pytestmark = pytest.mark.topology


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
