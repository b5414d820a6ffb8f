"""Webhooks on the real topology: a Celery worker of their own (the Procfile's `webhooks`),
beat's sweep, and a receiver on 127.0.0.1 that is slow, or whose sender is killed."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from standardwebhooks.webhooks import Webhook

from tests.integration.stack import SignedInClient, Topology
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.topology

ENDPOINT = """
from webhooks.models import Endpoint
endpoint = Endpoint.objects.create(url={url!r}, kinds=["badge.unlocked", "badge.tier_reached"])
print(endpoint.secret)
"""
MESSAGES = "SELECT count(*) FROM webhooks_message"
DELIVERED = "SELECT count(*) FROM webhooks_delivery WHERE status = 'delivered'"


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def topology(tmp_path):
    topology = Topology(tmp_path, extra_env={"ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "1"})
    try:
        topology.start(workers=1, beat=True)
        yield topology
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()


def _wait(condition, timeout: float, what: str, topology: Topology) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what} within {timeout} s\n{topology.logs()}")
        time.sleep(0.05)
    return time.monotonic() - began


def test_a_slow_receiver_does_not_delay_the_toast_and_gets_its_message_signed_once(
    topology, receiver
):
    secret = topology.python(ENDPOINT.format(url=receiver.url)).split()[-1]
    topology.start_procfile("webhooks", r"ready\.")
    receiver.delay = 5.0  # each answer takes five seconds
    client = SignedInClient(topology.base_url, "alice")

    async def visit_until_the_toast() -> float:
        url = topology.base_url.replace("http://", "ws://") + "/ws/live/"
        headers = {"Cookie": client.cookie_header, "Origin": topology.base_url}
        async with websockets.connect(url, additional_headers=headers) as socket:
            for place in client.place_ids()[:5]:
                await asyncio.to_thread(client.log_visit, place)
                began = time.monotonic()
                frame = str(await asyncio.wait_for(socket.recv(), timeout=10))
            assert "Badge unlocked" in frame
            return time.monotonic() - began

    try:
        toast = asyncio.run(visit_until_the_toast())
    finally:
        client.close()
    assert toast < 2.0, f"the toast took {toast:.2f} s"

    _wait(lambda: receiver.received, 30, "the slow receiver got the unlock", topology)
    [got] = receiver.received
    document = Webhook(secret).verify(got.body, got.headers)
    assert document["type"] == "badge.unlocked"
    assert document["data"]["user"]["username"] == "alice"
    topology.wait_until(DELIVERED, 1, timeout=30)
    time.sleep(6)  # a sweep or two later, still once
    assert len(receiver.received) == 1


def test_a_sender_killed_mid_delivery_is_replaced_and_nothing_is_lost(topology, receiver):
    secret = topology.python(ENDPOINT.format(url=receiver.url)).split()[-1]
    sender = topology.start_procfile("webhooks", r"ready\.")
    receiver.delay = 30.0  # the first try hangs until the sender is gone
    topology.python(
        "from django.contrib.auth import get_user_model\n"
        "from achievements.events import record_event\n"
        "from achievements.models import Badge, BadgeRequirement\n"
        "for n in range(3):\n"
        "    b = Badge.objects.create(key=f'kill{n}', name=f'Kill {n}')\n"
        "    BadgeRequirement.objects.create(\n"
        "        badge=b, event_type='image.posted', threshold=n + 1)\n"
        "alice = get_user_model().objects.get(username='alice')\n"
        "for n in range(3):\n"
        "    record_event(alice, 'image.posted', payload={'image_id': n}, event_id=f'k-{n}')\n"
    )
    _wait(lambda: receiver.arrived >= 1, 60, "a try reached the receiver", topology)
    topology.kill(sender)  # SIGKILL, mid-try: the try is never recorded
    receiver.delay = 0.0
    topology.start_procfile("webhooks", r"ready\.")
    [(count,)] = topology.query(MESSAGES)
    assert count >= 3  # the three new badges, and the demo's that the images also earn
    messages = _wait(
        lambda: topology.query(DELIVERED)[0][0] == count, 90, "every message delivered", topology
    )
    print(f"all {count} delivered {messages:.1f} s after the new sender started")
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(ids) == count  # each arrived; one perhaps twice, under one id to drop it by
    for got in receiver.received:
        Webhook(secret).verify(got.body, got.headers)
    # Back within the lease and a sweep, not the broker's hour.
    assert messages < 60
