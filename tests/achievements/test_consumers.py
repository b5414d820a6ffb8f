"""The live socket, through the real ASGI stack: origin check, session auth, groups."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from achievements import realtime
from achievements.engine import evaluate_event
from achievements.events import record_event
from project.asgi import application
from tests.factories import make_places_badge, make_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("close_thread_connections"),
]

ORIGIN = (b"origin", b"http://testserver")
HOST = (b"host", b"testserver")


@database_sync_to_async
def _signed_in_cookie(username: str) -> tuple[object, bytes]:
    user = make_user(username=username)
    client = Client()
    client.force_login(user)
    return user, f"sessionid={client.cookies['sessionid'].value}".encode()


async def _connect(
    cookie: bytes | None = None,
    origin: tuple[bytes, bytes] = ORIGIN,
    path: str = "/ws/live/",
):
    headers = [HOST, origin]
    if cookie:
        headers.append((b"cookie", cookie))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def _closed_as_not_signed_in(communicator) -> None:
    """Accepted, then closed at once with 4401: a browser sees the code and stops
    retrying, where a refused handshake would look like a network error."""
    assert await communicator.receive_output(timeout=1) == {
        "type": "websocket.close",
        "code": 4401,
    }


@database_sync_to_async
def _visit(user, place_id: int) -> None:
    evaluate_event(record_event(user, "visit.created", payload={"place_id": place_id}).event.pk)


async def test_an_anonymous_socket_is_closed_with_a_code_that_says_why():
    communicator, connected, _ = await _connect()
    assert connected
    await _closed_as_not_signed_in(communicator)


async def test_a_socket_from_a_foreign_origin_is_refused():
    _, cookie = await _signed_in_cookie("owner")
    communicator, connected, _ = await _connect(
        cookie, origin=(b"origin", b"https://evil.example")
    )
    assert not connected


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"testserver"), (b"origin", b"http://testserver:8080")],  # another port
        [(b"host", b"testserver"), (b"origin", b"https://testserver")],  # another scheme
        [(b"host", b"testserver"), (b"origin", b"http://sub.testserver")],
        [(b"host", b"testserver"), (b"origin", b"null")],
        [(b"host", b"testserver"), (b"origin", b"http://testserver:99999")],
        [(b"host", b"testserver")],  # no origin at all
        [(b"origin", b"http://testserver")],  # no host
        [(b"host", b"evil.example"), (b"origin", b"http://evil.example")],  # not an allowed host
    ],
    ids=["port", "scheme", "subdomain", "null", "bad-port", "no-origin", "no-host", "host"],
)
async def test_a_socket_is_refused_unless_its_origin_is_exactly_this_site(headers):
    _, cookie = await _signed_in_cookie("owner")
    communicator = WebsocketCommunicator(
        application, "/ws/live/", headers=[*headers, (b"cookie", cookie)]
    )
    connected, _ = await communicator.connect()
    assert not connected


@pytest.mark.parametrize(
    ("scheme", "headers", "origin"),
    [
        ("wss", [], b"https://testserver"),
        ("ws", [(b"x-forwarded-proto", b"https")], b"https://testserver"),
        ("ws", [(b"host", b"testserver:8000")], b"http://testserver:8000"),
        ("ws", [], b"https://app.example.com"),
    ],
    ids=["tls", "tls-at-the-proxy", "own-port", "csrf-trusted"],
)
async def test_a_socket_from_this_sites_own_origin_is_let_in(settings, scheme, headers, origin):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.com"]
    _, cookie = await _signed_in_cookie("owner")
    host = [] if any(name == b"host" for name, _ in headers) else [HOST]
    communicator = WebsocketCommunicator(
        application,
        "/ws/live/",
        headers=[*host, *headers, (b"origin", origin), (b"cookie", cookie)],
    )
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect()
    assert connected
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@pytest.mark.parametrize("cookie", [b"sessionid=forged", b"sessionid=", b"other=1; \xff=\xfe"])
async def test_a_socket_without_a_valid_session_is_anonymous(cookie):
    communicator, connected, _ = await _connect(cookie)
    assert connected
    await _closed_as_not_signed_in(communicator)


async def test_a_session_from_before_a_password_change_no_longer_signs_a_socket_in():
    user, cookie = await _signed_in_cookie("owner")

    @database_sync_to_async
    def change_password() -> None:
        user.set_password("a new one")
        user.save()

    await change_password()
    communicator, connected, _ = await _connect(cookie)
    assert connected
    await _closed_as_not_signed_in(communicator)


async def test_a_session_from_before_a_secret_key_rotation_signs_a_socket_in_unchanged(settings):
    """Django re-keys such a session on the next page load; a socket cannot send the
    new cookie, so it must leave the session as it is (re-keying signed pages out)."""
    from django.contrib.sessions.models import Session

    settings.SECRET_KEY = "before-the-rotation-" + "x" * 40
    _, cookie = await _signed_in_cookie("owner")
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "after-the-rotation-" + "y" * 40
    communicator, connected, _ = await _connect(cookie)
    assert connected
    assert await communicator.receive_nothing(timeout=0.5)  # signed in: not closed with 4401
    await communicator.disconnect()
    key = cookie.decode().split("=", 1)[1]
    assert await database_sync_to_async(Session.objects.filter(session_key=key).exists)()


async def test_a_socket_keeps_its_user_and_not_the_session_it_came_with():
    """Memory per socket (bench/connections.py): the handshake's session store and
    cookies are not kept in the scope a consumer holds for the socket's life."""
    from achievements.socket_auth import SessionUserMiddleware

    user, cookie = await _signed_in_cookie("owner")
    scopes: list[dict] = []

    async def inner(scope, receive, send):
        scopes.append(scope)

    await SessionUserMiddleware(inner)(
        {"type": "websocket", "path": "/ws/live/", "headers": [(b"cookie", cookie)]}, None, None
    )
    [scope] = scopes
    assert scope["user"].pk == user.pk and scope["user"].is_authenticated
    assert "session" not in scope and "cookies" not in scope


async def test_a_signed_in_user_receives_progress_and_the_unlock_toast_as_html():
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=2)
    communicator, connected, _ = await _connect(cookie)
    assert connected

    await _visit(user, 1)
    frame = await communicator.receive_from(timeout=3)
    assert 'id="badge-places_visited_2"' in frame
    assert 'aria-valuenow="50"' in frame
    assert "1 of 2 different places" in frame
    assert "toast" not in frame

    await _visit(user, 2)
    frame = await communicator.receive_from(timeout=3)
    assert 'aria-valuenow="100"' in frame
    assert '<div id="toasts" hx-swap-oob="beforeend">' in frame
    assert "Badge unlocked: <strong>2 Places Visited</strong>" in frame
    assert 'data-dismiss-toast aria-label="Dismiss notification: 2 Places Visited"' in frame
    await communicator.disconnect()


async def test_a_user_never_receives_another_users_events():
    owner, owner_cookie = await _signed_in_cookie("owner")
    other, other_cookie = await _signed_in_cookie("other")
    await database_sync_to_async(make_places_badge)(threshold=1)
    owner_socket, _, _ = await _connect(owner_cookie)
    other_socket, _, _ = await _connect(other_cookie)

    # The other user even asks, in every way a client could, for the owner's group.
    for message in (
        realtime.user_group(owner.pk),
        f'{{"subscribe": "{realtime.user_group(owner.pk)}"}}',
        f'{{"type": "group_add", "group": "{realtime.user_group(owner.pk)}"}}',
    ):
        await other_socket.send_to(text_data=message)

    await _visit(owner, 1)
    assert "Badge unlocked" in await owner_socket.receive_from(timeout=3)
    assert await other_socket.receive_nothing(timeout=0.5)

    await _visit(other, 2)
    assert "Badge unlocked" in await other_socket.receive_from(timeout=3)
    assert await owner_socket.receive_nothing(timeout=0.5)
    await owner_socket.disconnect()
    await other_socket.disconnect()


async def test_a_user_with_two_tabs_gets_the_frame_in_both():
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=3)
    first, _, _ = await _connect(cookie)
    second, _, _ = await _connect(cookie)
    await _visit(user, 1)
    frames = await asyncio.gather(first.receive_from(timeout=3), second.receive_from(timeout=3))
    assert all('aria-valuenow="33"' in frame for frame in frames)
    await first.disconnect()
    await second.disconnect()


async def test_a_pushed_frame_costs_the_server_no_trip_to_the_sync_thread(monkeypatch):
    """Channels' dispatch would close stale database connections on the shared
    sync thread before every handler; a push handler touches no database."""
    trips = []
    original = sync_to_async

    def counting(function, *args, **kwargs):
        trips.append(getattr(function, "__name__", repr(function)))
        return original(function, *args, **kwargs)

    user, cookie = await _signed_in_cookie("owner")
    communicator, _, _ = await _connect(cookie)
    monkeypatch.setattr("channels.db.sync_to_async", counting)
    frame = '<div id="pushed">hello</div>'
    await get_channel_layer().group_send(
        realtime.user_group(user.pk),
        {
            "type": "badges.changed",
            "group": realtime.user_group(user.pk),
            "cards": [],
            "toasts": [],
            "html": frame,
        },
    )
    assert await communicator.receive_from(timeout=3) == frame
    assert trips == []
    await communicator.disconnect()


async def test_a_closed_socket_leaves_the_users_group():
    user, cookie = await _signed_in_cookie("owner")
    communicator, _, _ = await _connect(cookie)
    await communicator.disconnect()
    layer = get_channel_layer()
    assert not layer.groups.get(realtime.user_group(user.pk))


async def test_badge_text_from_staff_is_escaped_in_pushed_frames():
    user, cookie = await _signed_in_cookie("owner")

    @sync_to_async
    def hostile_badge():
        badge = make_places_badge(threshold=1)
        badge.name = "<img src=x onerror=alert(1)>"
        badge.description = "<script>alert(2)</script>"
        badge.save()

    await hostile_badge()
    communicator, _, _ = await _connect(cookie)
    await _visit(user, 1)
    frame = await communicator.receive_from(timeout=3)
    assert "<img src=x" not in frame and "<script>" not in frame
    assert "&lt;img src=x onerror=alert(1)&gt;" in frame
    await communicator.disconnect()


def _unlock_id(frame: str) -> int:
    match = re.search(r'data-unlock-id="(\d+)"', frame)
    assert match, frame
    return int(match.group(1))


@database_sync_to_async
def _unlock_states(user) -> list[tuple[bool, bool]]:
    from achievements.models import Unlock

    return [
        (u.delivered_at is not None, u.seen_at is not None)
        for u in Unlock.objects.filter(user=user)
    ]


async def test_an_unlock_pushed_to_a_connected_page_is_marked_delivered_and_then_seen():
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=1)
    communicator, _, _ = await _connect(cookie)
    await _visit(user, 1)
    frame = await communicator.receive_from(timeout=3)
    unlock_id = _unlock_id(frame)
    assert await _unlock_states(user) == [(True, False)]

    await communicator.send_to(text_data=json.dumps({"seen": [unlock_id]}))
    await asyncio.sleep(0.2)
    assert await _unlock_states(user) == [(True, True)]
    await communicator.disconnect()


async def test_a_message_nested_a_thousand_deep_is_ignored_and_the_socket_stays_open():
    """Two thousand characters of brackets, within the message size limit, would
    take the JSON parser past Python's recursion limit."""
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=1)
    communicator, _, _ = await _connect(cookie)
    await _visit(user, 1)
    unlock_id = _unlock_id(await communicator.receive_from(timeout=3))

    await communicator.send_to(text_data="[" * 1000 + "]" * 1000)
    await communicator.send_to(text_data=json.dumps({"seen": [unlock_id]}))
    await asyncio.sleep(0.2)
    assert await _unlock_states(user) == [(True, True)]
    await communicator.disconnect()


async def test_a_page_that_connects_later_catches_up_on_unseen_unlocks_once():
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=1)
    await _visit(user, 1)  # no page open: the push reaches nobody
    assert await _unlock_states(user) == [(False, False)]

    first, _, _ = await _connect(cookie)
    frame = await first.receive_from(timeout=3)
    assert "Badge unlocked: <strong>1 Places Visited</strong>" in frame
    unlock_id = _unlock_id(frame)
    await first.send_to(text_data=json.dumps({"seen": [unlock_id]}))
    await asyncio.sleep(0.2)
    await first.disconnect()

    second, _, _ = await _connect(cookie)
    assert await second.receive_nothing(timeout=0.5)
    await second.disconnect()


async def test_a_reconnecting_page_gets_the_cards_that_changed_while_it_was_away():
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=5)
    rendered_at = time.time() - 1
    await _visit(user, 1)
    await _visit(user, 2)
    communicator, connected, _ = await _connect(cookie, path=f"/ws/live/?since={rendered_at}")
    assert connected
    frame = await communicator.receive_from(timeout=3)
    assert 'aria-valuenow="40"' in frame
    await communicator.disconnect()


async def test_a_page_cannot_mark_another_users_unlock_seen():
    owner, owner_cookie = await _signed_in_cookie("owner")
    other, other_cookie = await _signed_in_cookie("other")
    await database_sync_to_async(make_places_badge)(threshold=1)
    await _visit(owner, 1)
    from achievements.models import Unlock

    unlock_id = (await database_sync_to_async(Unlock.objects.get)(user=owner)).pk
    other_socket, _, _ = await _connect(other_cookie)
    for message in (
        json.dumps({"seen": [unlock_id]}),
        json.dumps({"seen": "all"}),
        json.dumps({"seen": [True, "1", None, 1.5]}),
        "not json",
        json.dumps([1, 2]),
        "x" * 5000,
    ):
        await other_socket.send_to(text_data=message)
    await asyncio.sleep(0.2)
    assert await _unlock_states(owner) == [(False, False)]
    await other_socket.disconnect()


async def test_unlocks_of_a_badge_made_inactive_are_not_offered_on_connect():
    user, cookie = await _signed_in_cookie("owner")
    badge = await database_sync_to_async(make_places_badge)(threshold=1)
    await _visit(user, 1)
    badge.is_active = False
    await database_sync_to_async(badge.save)()
    communicator, _, _ = await _connect(cookie)
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_absurd_or_excessive_client_messages_are_ignored_without_closing_the_socket():
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=2)
    communicator, _, _ = await _connect(cookie)
    await communicator.send_to(text_data=json.dumps({"seen": [2**64, -1, 0]}))
    for _ in range(100):
        await communicator.send_to(text_data=json.dumps({"seen": [1]}))
    await _visit(user, 1)
    frame = await communicator.receive_from(timeout=3)
    assert 'aria-valuenow="50"' in frame
    await communicator.disconnect()


async def test_no_url_or_query_string_selects_another_users_group():
    owner, _ = await _signed_in_cookie("owner")
    other, other_cookie = await _signed_in_cookie("other")
    await database_sync_to_async(make_places_badge)(threshold=1)
    group = realtime.user_group(owner.pk)
    for path in (
        f"/ws/live/?user={owner.pk}&group={group}&user_id={owner.pk}",
        f"/ws/live/?since=0&user={owner.pk}",
    ):
        communicator, connected, _ = await _connect(other_cookie, path=path)
        assert connected
        await _visit(owner, 1)
        assert await communicator.receive_nothing(timeout=0.5), path
        await communicator.disconnect()
    for path in (f"/ws/live/{owner.pk}/", f"/ws/{group}/", "/ws/"):
        with pytest.raises(ValueError, match="No route found"):
            await _connect(other_cookie, path=path)


@database_sync_to_async
def _revoke_announced(user) -> int:
    from achievements.awards import Actor, revoke_badge
    from achievements.models import Badge

    badge = Badge.objects.get()
    badge.announce_endings = True
    badge.save()
    [ended] = revoke_badge(user_id=user.pk, badge=badge, reason="r", by=Actor())
    return ended.pk


async def test_a_page_that_connects_later_is_told_once_that_a_badge_was_taken_back():
    """As with unlocks: an ending no page has shown comes with the next connect,
    and once acknowledged, never again."""
    user, cookie = await _signed_in_cookie("owner")
    await database_sync_to_async(make_places_badge)(threshold=1)
    await _visit(user, 1)
    unlock_pk = await _revoke_announced(user)  # no page open: the push reaches nobody

    first, _, _ = await _connect(cookie)
    frame = await first.receive_from(timeout=3)
    assert f'data-ending-id="{unlock_pk}"' in frame
    assert "Badge taken back: <strong>1 Places Visited</strong>" in frame
    assert "data-unlock-id" not in frame
    await first.send_to(text_data=json.dumps({"ended_seen": [unlock_pk]}))
    await asyncio.sleep(0.2)
    await first.disconnect()

    # The unlock's own toast, never shown, is not offered either: it ended.
    second, _, _ = await _connect(cookie)
    assert await second.receive_nothing(timeout=0.5)
    await second.disconnect()
