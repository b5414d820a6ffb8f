"""The staff socket for a re-evaluation job: staff only, state on connect, pushes after."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from achievements import reevaluation
from achievements.models import Reevaluation
from project.asgi import application
from tests.factories import make_places_badge, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_thread_connections():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@database_sync_to_async
def _cookie(staff: bool) -> bytes:
    if staff:
        user = get_user_model().objects.create_superuser("boss", "b@example.com", "pw")
    else:
        user = make_user(username="plain")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@database_sync_to_async
def _job() -> int:
    job = Reevaluation.objects.create()
    job.badges.set([make_places_badge(threshold=1)])
    return job.pk


async def _connect(job_id: int, cookie: bytes) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application,
        f"/ws/staff/reevaluations/{job_id}/",
        headers=[(b"host", b"testserver"), (b"origin", b"http://testserver"), (b"cookie", cookie)],
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def test_only_staff_may_watch_a_job():
    job_id = await _job()
    socket = await _connect(job_id, await _cookie(staff=False))
    closed = await socket.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": 4403}
    await socket.disconnect()


async def test_staff_get_the_stored_state_then_every_push():
    job_id = await _job()
    socket = await _connect(job_id, await _cookie(staff=True))
    first = await socket.receive_from(timeout=2)
    assert f'id="reevaluation-{job_id}"' in first and "Queued" in first
    await database_sync_to_async(reevaluation.run)(job_id)  # pushes as it goes, and at the end
    frames = []
    while not await socket.receive_nothing(timeout=0.5):
        frames.append(await socket.receive_from(timeout=2))
    assert frames and "Done" in frames[-1] and 'aria-valuenow="100"' in frames[-1]
    await socket.disconnect()
