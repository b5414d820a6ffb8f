"""/healthz and /metrics on the production topology: Redis counters shared across processes."""

from __future__ import annotations

import re
import time

import httpx
import pytest

pytestmark = pytest.mark.topology


def test_healthz_sees_the_worker_and_metrics_add_up_across_processes(topology_site):
    site = topology_site
    health = httpx.get(f"{site.base_url}/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["checks"] == {"database": "ok", "redis": "ok", "workers": "1 alive"}

    key = site.python(
        "from api.models import ApiKey\n"
        "print(ApiKey.issue('ops-live-test', scopes=['metrics:read', 'events:write'])[1])"
    ).splitlines()[-1]
    auth = {"Authorization": f"Bearer {key}"}

    def scrape() -> str:
        response = httpx.get(f"{site.base_url}/metrics", headers=auth)
        assert response.status_code == 200, response.text
        return response.text

    def value(text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = scrape()
    events = [
        {
            "event_id": f"ops-{n}",
            "user_id": "alice",
            "event_type": "image.posted",
            "occurred_at": "2026-11-20T10:00:00Z",
            "payload": {"image_id": n},
        }
        for n in range(5)
    ]
    # Recorded by Daphne, evaluated by the worker process: one set of numbers.
    response = httpx.post(f"{site.base_url}/api/v1/events", json={"events": events}, headers=auth)
    assert response.status_code == 202, response.text
    httpx.post(f"{site.base_url}/api/v1/events", json=events[0], headers=auth)  # a duplicate
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = scrape()
        processed = value(after, "accolade_events_processed_total")
        if processed - value(before, "accolade_events_processed_total") >= 5:
            break
        time.sleep(0.2)
    for name, grew in [
        ("accolade_events_received_total", 5),
        ("accolade_events_deduplicated_total", 1),
        ("accolade_events_processed_total", 5),
        ("accolade_evaluation_seconds_count", 5),
    ]:
        assert value(after, name) - value(before, name) == grew, name
    assert value(after, "accolade_workers_alive") == 1
    assert "accolade_queue_depth " in after
    assert httpx.get(f"{site.base_url}/metrics").status_code == 401
