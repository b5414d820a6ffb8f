"""The whole loop on running servers: a visit over HTTP becomes frames on a real WebSocket.

Run against the embedded mode (runserver alone) and the production topology
(PostgreSQL, Redis, a Celery worker process, Daphne).
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import websockets

from tests.integration.stack import SignedInClient

STACKS = [
    pytest.param("embedded_site", id="embedded"),
    pytest.param("topology_site", id="topology", marks=pytest.mark.topology),
]


def _percent(frame: str, key: str) -> int | None:
    match = re.search(rf'id="badge-{key}".*?aria-valuenow="(\d+)"', frame, re.S)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize("site_name", STACKS)
def test_five_distinct_visits_push_progress_and_then_the_toast_within_two_seconds(
    request, site_name
):
    site = request.getfixturevalue(site_name)
    client = SignedInClient(site.base_url, "alice")

    async def scenario() -> None:
        url = site.base_url.replace("http://", "ws://") + "/ws/live/"
        headers = {"Cookie": client.cookie_header, "Origin": site.base_url}
        async with websockets.connect(url, additional_headers=headers) as socket:
            places = client.place_ids()[:5]
            for number, place in enumerate(places, start=1):
                await asyncio.to_thread(client.log_visit, place)
                answered = time.monotonic()
                frame = str(await asyncio.wait_for(socket.recv(), timeout=10))
                arrived = time.monotonic() - answered
                print(f"{site.name}: visit {number}, frame {arrived * 1000:.1f} ms after response")
                assert _percent(frame, "places_visited_5") == number * 20, frame
                if number < 5:
                    assert "Badge unlocked" not in frame
            assert "Badge unlocked: <strong>5 Places Visited</strong>" in frame
            assert arrived < 2.0, f"the toast took {arrived:.2f}s after the fifth visit"

    try:
        asyncio.run(scenario())
    except Exception:
        print(site.logs())
        raise
    finally:
        client.close()


@pytest.mark.parametrize("site_name", STACKS)
def test_an_anonymous_socket_is_closed_with_4401_by_the_server(request, site_name):
    site = request.getfixturevalue(site_name)

    async def scenario() -> None:
        url = site.base_url.replace("http://", "ws://") + "/ws/live/"
        async with websockets.connect(url, additional_headers={"Origin": site.base_url}) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    asyncio.run(scenario())


@pytest.mark.parametrize("site_name", STACKS)
def test_a_socket_from_another_origin_is_rejected(request, site_name):
    site = request.getfixturevalue(site_name)
    client = SignedInClient(site.base_url, "bob")

    async def scenario() -> None:
        url = site.base_url.replace("http://", "ws://") + "/ws/live/"
        headers = {"Cookie": client.cookie_header, "Origin": "http://evil.example"}
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(url, additional_headers=headers):
                pass

    try:
        asyncio.run(scenario())
    finally:
        client.close()
