"""Sockets end with their session, and one session or address holds only so many."""

from __future__ import annotations

import time
from datetime import timedelta
from importlib import import_module

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.db import transaction
from django.test import Client
from django.utils import timezone

from achievements import socket_sessions
from achievements.models import Reevaluation
from project.asgi import application
from tests.factories import PASSWORD, make_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("close_thread_connections"),
]

ORIGIN = (b"origin", b"http://testserver")


@database_sync_to_async
def _browser(username: str = "owner", *, staff: bool = False) -> tuple[Client, bytes]:
    """A browser signed in through the log-in form; its session cookie."""
    model = get_user_model()
    if not model.objects.filter(username=username).exists():
        if staff:
            model.objects.create_superuser(username, f"{username}@example.com", PASSWORD)
        else:
            make_user(username=username)
    client = Client()
    assert (
        client.post("/accounts/login/", {"username": username, "password": PASSWORD}).status_code
        == 302
    )
    return client, f"sessionid={client.cookies['sessionid'].value}".encode()


async def _open(cookie: bytes, path: str = "/ws/live/", address: str = "192.0.2.1"):
    headers = [(b"host", b"testserver"), ORIGIN, (b"cookie", cookie)]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    communicator.scope["client"] = (address, 40000)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _still_open(communicator) -> bool:
    return await communicator.receive_nothing(timeout=0.3)


async def _closed_with(communicator, code: int, timeout: float = 2) -> bool:
    while True:
        message = await communicator.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            return message.get("code") == code


async def test_logging_out_closes_that_sessions_sockets_and_no_others():
    browser, cookie = await _browser()
    _, other_cookie = await _browser()  # the same user in another browser
    sockets = [await _open(cookie), await _open(cookie)]
    other = await _open(other_cookie)
    assert await _still_open(sockets[0])
    await database_sync_to_async(browser.post)("/accounts/logout/")
    for socket in sockets:
        assert await _closed_with(socket, 4401)
    assert await _still_open(other)
    await other.disconnect()


async def test_deleting_the_session_has_its_sockets_reconnect_and_be_refused():
    _, cookie = await _browser()
    socket = await _open(cookie)
    key = cookie.decode().split("=", 1)[1]
    store = import_module(settings.SESSION_ENGINE).SessionStore
    await database_sync_to_async(lambda: store().delete(key))()
    assert await _closed_with(socket, 4000)
    again = await _open(cookie)  # what the page does on 4000
    assert await _closed_with(again, 4401)


async def test_a_password_change_on_this_browser_keeps_it_signed_in_through_a_reconnect():
    """Django cycles the session key; the old socket reconnects with the new cookie."""
    browser, cookie = await _browser()
    socket = await _open(cookie)

    @database_sync_to_async
    def change_password() -> bytes:
        from django.contrib.auth import update_session_auth_hash
        from django.test import RequestFactory

        user = get_user_model().objects.get(username="owner")
        user.set_password("a brand new passphrase")
        user.save()
        request = RequestFactory().get("/")
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(
            cookie.decode().split("=", 1)[1]
        )
        request.user = user
        update_session_auth_hash(request, user)
        request.session.save()  # as SessionMiddleware does with the response
        return f"sessionid={request.session.session_key}".encode()

    new_cookie = await change_password()
    assert await _closed_with(socket, 4000)
    again = await _open(new_cookie)
    assert await _still_open(again)
    await again.disconnect()


@pytest.mark.parametrize("change", ["password", "deactivate", "delete"])
async def test_a_change_to_the_user_that_ends_sessions_closes_their_sockets(change):
    _, cookie = await _browser()

    @database_sync_to_async
    def apply() -> None:
        user = get_user_model().objects.get(username="owner")
        if change == "password":
            user.set_password("a brand new passphrase")
            user.save()
        elif change == "deactivate":
            user.is_active = False
            user.save(update_fields=["is_active"])
        else:
            user.delete()

    socket = await _open(cookie)
    await apply()
    assert await _closed_with(socket, 4000)
    again = await _open(cookie)  # the page reconnects, and is told it is signed out
    assert await _closed_with(again, 4401)


async def test_a_change_inside_a_transaction_is_checked_once_it_commits_and_not_if_rolled_back():
    """The admin saves in a transaction: a check must not read the user as it was."""
    _, cookie = await _browser()
    socket = await _open(cookie)

    @database_sync_to_async
    def deactivate(commit: bool) -> None:
        try:
            with transaction.atomic():
                user = get_user_model().objects.get(username="owner")
                user.is_active = False
                user.save()
                time.sleep(0.5)  # a check run now would still see the user active
                if not commit:
                    raise RuntimeError("rolled back")
        except RuntimeError:
            pass

    await deactivate(commit=False)
    assert await _still_open(socket)
    await deactivate(commit=True)
    assert await _closed_with(socket, 4000)


async def test_a_change_that_does_not_end_the_session_leaves_the_socket_open():
    _, cookie = await _browser()
    socket = await _open(cookie)

    @database_sync_to_async
    def rename() -> None:
        get_user_model().objects.filter(username="owner").update(first_name="x")
        user = get_user_model().objects.get(username="owner")
        user.first_name = "Olive"
        user.save()

    await rename()
    assert await _still_open(socket)
    await socket.disconnect()


async def test_a_session_that_lapses_unseen_is_found_by_the_periodic_check(settings):
    settings.SOCKET_SESSION_RECHECK_SECONDS = 1
    _, cookie = await _browser()
    socket = await _open(cookie)
    key = cookie.decode().split("=", 1)[1]
    # Expired in place: no signal, no push; only the check can notice.
    await database_sync_to_async(Session.objects.filter(session_key=key).update)(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    assert await _closed_with(socket, 4000, timeout=3)


async def test_a_staff_job_socket_closes_when_its_session_ends():
    browser, cookie = await _browser("boss", staff=True)
    job = await database_sync_to_async(Reevaluation.objects.create)()
    socket = await _open(cookie, path=f"/ws/staff/reevaluations/{job.pk}/")
    await socket.receive_from(timeout=2)  # the job's stored state
    await database_sync_to_async(browser.post)("/accounts/logout/")
    assert await _closed_with(socket, 4401)


async def test_a_staff_job_socket_closes_when_its_user_may_no_longer_watch_jobs():
    _, cookie = await _browser("boss", staff=True)
    job = await database_sync_to_async(Reevaluation.objects.create)()
    socket = await _open(cookie, path=f"/ws/staff/reevaluations/{job.pk}/")
    await socket.receive_from(timeout=2)

    @database_sync_to_async
    def demote() -> None:
        get_user_model().objects.filter(username="boss").update(is_superuser=False)
        user = get_user_model().objects.get(username="boss")
        group = Group.objects.create(name="watchers")
        user.groups.add(group)  # a membership change: the socket checks, and is refused

    await demote()
    assert await _closed_with(socket, 4000)


async def test_one_session_holds_only_so_many_sockets(settings):
    settings.SOCKETS_PER_SESSION = 2
    _, cookie = await _browser()
    first, second = await _open(cookie), await _open(cookie)
    third = await _open(cookie)
    assert await _closed_with(third, 4429)
    assert await _still_open(first) and await _still_open(second)
    await first.disconnect()
    fourth = await _open(cookie)  # a closed tab frees its place
    assert await _still_open(fourth)
    await second.disconnect()
    await fourth.disconnect()
    assert socket_sessions.open_sockets() == ({}, {})


async def test_one_address_holds_only_so_many_sockets(settings):
    settings.SOCKETS_PER_ADDRESS = 2
    cookies = [(await _browser(f"user{n}"))[1] for n in range(3)]
    sockets = [await _open(cookie, address="198.51.100.9") for cookie in cookies[:2]]
    refused = await _open(cookies[2], address="198.51.100.9")
    assert await _closed_with(refused, 4429)
    elsewhere = await _open(cookies[2], address="198.51.100.10")
    assert await _still_open(elsewhere)
    for socket in [*sockets, elsewhere]:
        await socket.disconnect()
