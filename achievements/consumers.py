from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string
from django.utils import translation

from achievements import hub, presence, realtime
from achievements.cards import cards_for_user, reader, unseen_endings, unseen_unlocks
from achievements.frames import render_frame
from achievements.models import Unlock
from achievements.socket_sessions import (
    CLOSE_NOT_AUTHENTICATED,
    CLOSE_RECONNECT,
    CLOSE_TOO_MANY_SOCKETS,
    SESSION_MESSAGES,
    SessionBoundSocket,
)
from project.inputs import json_depth_problem

logger = logging.getLogger(__name__)

# Close codes in the application range, so a page can tell "not signed in"
# (4401: at connect, or on log-out), "the session changed, reconnect" (4000)
# and "too many sockets" (4429) from a network failure. They are sent after
# accepting: a refused handshake reaches the browser as 1006, which the htmx
# ws extension retries forever.
__all__ = ["CLOSE_NOT_AUTHENTICATED", "CLOSE_RECONNECT", "CLOSE_TOO_MANY_SOCKETS", "LiveConsumer"]
# How many unseen unlocks one (re)connect catches up on: no more than a page
# shows at once (accolade.js MAX_TOASTS), so none is dismissed unseen; the
# rest come on the next connect, and all are on the badges page.
CATCH_UP_LIMIT = 4
MAX_SEEN_IDS = 50
# Pages send one acknowledgement per frame with toasts; anything beyond this
# many messages a minute is ignored rather than turned into database writes.
MAX_MESSAGES_PER_MINUTE = 60
MAX_ID = 2**63 - 1


class PushConsumer(AsyncWebsocketConsumer):
    """A consumer whose database work all runs through database_sync_to_async.

    Channels' dispatch hops to the shared sync thread before every handler,
    to close stale database connections; no handler here uses the ORM
    outside `database_sync_to_async`, so the hop is skipped (its cost:
    docs/performance.md, "Consumers without the sync hop").

    A connect that fails or is cancelled after joining (a database error in
    the catch-up, or Daphne giving up on a client that left) gets no
    disconnect() from Channels; `_leave` runs whatever the ending, so what a
    socket joined is always let go.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._leave()

    async def _leave(self) -> None:
        """Let go of what the socket joined; safe to call again."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class LiveConsumer(PushConsumer, SessionBoundSocket):
    """One signed-in page's live connection: pushes toasts and progress as HTML.

    The group comes from the session's user on the server; nothing the client
    sends can change which user's messages it receives, and the socket closes
    when that session ends (achievements.socket_sessions).
    """

    # No channel of its own: pushes come through the process's hub
    # (hub.SocketHub), so the socket waits on nothing but its connection.
    channel_layer_alias = "accolade.no-layer-per-socket"

    group_name: str | None = None
    user_id: int | None = None
    socket_id: str = ""
    hub: hub.SocketHub | None = None
    # Pushes that came before the catch-up frame went out; None once it has.
    _held: list[dict[str, Any]] | None = None
    _window_started: float = 0.0
    _messages_in_window: int = 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        realtime.register_server_loop(asyncio.get_running_loop())
        if not await self.bind(user.pk):
            return
        self.user_id = user.pk
        self.socket_id = uuid.uuid4().hex
        self._held = []
        group = realtime.user_group(user.pk)
        self.hub = hub.socket_hub()
        await self.hub.join(group, self)
        self.group_name = group  # set once joined: _leave leaves only what was joined
        # Present before the catch-up is read: a change committed after that
        # read is pushed, one committed before it is in the catch-up.
        await presence.join(user.pk, self.socket_id)
        await self.accept()
        await self.catch_up()
        # Pushes that arrived meanwhile are newer than the catch-up's rows:
        # after it, in order (those arriving while these go out join the end).
        while self._held:
            await self.dispatch(self._held.pop(0))
        self._held = None

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def _leave(self) -> None:
        """Leave the hub and presence; safe to call again."""
        self.unbind()
        socket_hub, group, self.hub, self.group_name = self.hub, self.group_name, None, None
        user_id, self.user_id = self.user_id, None
        try:
            if socket_hub is not None and group is not None:
                await socket_hub.leave(group, self)
        finally:
            if user_id is not None:
                await presence.leave(user_id, self.socket_id)

    async def deliver(self, message: dict[str, Any]) -> None:
        """A message of this user's group, from the hub."""
        if message.get("type") in SESSION_MESSAGES:
            await self.dispatch(message)  # even before the catch-up: it may close the socket
            return
        if self._held is not None:
            self._held.append(message)  # not accepted or caught up yet
            return
        await self.dispatch(message)

    async def catch_up(self) -> None:
        """Send what this page may have missed while it was not connected.

        The channel layer is at-most-once: anything pushed while a socket was
        down is gone. So on every connect the page gets the cards that changed
        since it was rendered (the `since` query parameter, a timestamp the
        page carries; it only narrows what is sent, it grants nothing) and
        every unlock no page has shown yet. The page drops toasts it showed
        already, so a reconnect never shows one twice.
        """
        assert self.user_id is not None
        since = _parse_since(self.scope.get("query_string", b""))
        frame = await database_sync_to_async(_catch_up_frame)(self.user_id, since)
        if frame:
            await self.send(text_data=frame)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Pages report which unlock toasts they have shown; nothing else is accepted.

        Ids that are not this user's unlocks are ignored by the update, so a
        client cannot touch anyone else's state.
        """
        if not text_data or len(text_data) > 2000 or self.user_id is None:
            return
        now = time.monotonic()
        if now - self._window_started > 60:
            self._window_started, self._messages_in_window = now, 0
        self._messages_in_window += 1
        if self._messages_in_window > MAX_MESSAGES_PER_MINUTE:
            return
        if json_depth_problem(text_data):  # within 2000 characters, past the recursion limit
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        # Unlocks' toasts shown ("seen"), and endings' ("ended_seen"): unlock ids both.
        for key, mark in (
            ("seen", Unlock.objects.mark_seen),
            ("ended_seen", Unlock.objects.mark_end_seen),
        ):
            listed = message.get(key)
            if not isinstance(listed, list):
                continue
            ids = [
                i
                for i in listed[:MAX_SEEN_IDS]
                if isinstance(i, int) and not isinstance(i, bool) and 0 < i <= MAX_ID
            ]
            if ids:
                await database_sync_to_async(mark)(self.user_id, ids)

    async def badges_changed(self, message: dict[str, Any]) -> None:
        """Fresh cards for what one evaluation changed, then a toast per unlock, in one frame.

        The sender renders the frame once per user (`html`), so a user's open
        tabs, and every socket a broadcast reaches, cost this process a send,
        not a render.
        """
        if message["html"]:
            await self.send(text_data=message["html"])


def _parse_since(query_string: bytes) -> datetime | None:
    values = parse_qs(query_string.decode("latin-1")).get("since")
    if not values:
        return None
    try:
        return datetime.fromtimestamp(float(values[0]), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _catch_up_frame(user_id: int, since: datetime | None) -> str:
    """The catch-up frame, in the user's language (as pushes are)."""
    settings_of = reader(user_id)  # one query for the language and the muting
    with translation.override(settings_of.language or settings.LANGUAGE_CODE):
        cards = cards_for_user(user_id, changed_since=since) if since else []
        toasts = unseen_unlocks(user_id, limit=CATCH_UP_LIMIT, muting=settings_of.muting)
        toasts += unseen_endings(user_id, limit=CATCH_UP_LIMIT, muting=settings_of.muting)
        return render_frame(cards, toasts)


CLOSE_FORBIDDEN = 4403


class ReevaluationConsumer(PushConsumer, SessionBoundSocket):
    """A staff page watching one re-evaluation job: its progress panel, as it changes.

    On connect the page gets the job's stored state, so a reload (or a
    reconnect) shows where the job is even if no push comes for a while.
    It closes when the staff member's session ends: it listens to that user's
    group, through the process's hub, for session messages only.
    """

    group_name: str | None = None
    user_group: str | None = None
    hub: hub.SocketHub | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        if not await database_sync_to_async(_may_watch_jobs)(user):
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        from achievements import reevaluation

        realtime.register_server_loop(asyncio.get_running_loop())
        if not await self.bind(user.pk):
            return
        self.hub = hub.socket_hub()
        await self.hub.join(realtime.user_group(user.pk), self)
        self.user_group = realtime.user_group(user.pk)
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.group_name = reevaluation.group(job_id)
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        panel = await database_sync_to_async(_panel)(job_id)
        if panel:
            await self.send(text_data=panel)

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def _leave(self) -> None:
        """Leave the job's group and the hub; safe to call again."""
        self.unbind()
        group, self.group_name = self.group_name, None
        socket_hub, user_group, self.hub, self.user_group = self.hub, self.user_group, None, None
        try:
            if group:
                await self.channel_layer.group_discard(group, self.channel_name)
        finally:
            if socket_hub is not None and user_group is not None:
                await socket_hub.leave(user_group, self)

    async def still_allowed(self, user: Any) -> bool:
        # Demoted, or the permission taken away: the socket goes with it.
        return bool(await database_sync_to_async(_may_watch_jobs)(user))

    async def deliver(self, message: dict[str, Any]) -> None:
        """A message of the user's group, from the hub: only session messages matter here."""
        if message.get("type") in SESSION_MESSAGES:
            await self.dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return  # nothing is accepted from the page

    async def reevaluation_progress(self, message: dict[str, Any]) -> None:
        await self.send(text_data=message["html"])


def _may_watch_jobs(user: Any) -> bool:
    return bool(
        user.is_active and user.is_staff and user.has_perm("achievements.view_reevaluation")
    )


def _panel(job_id: int) -> str:
    from achievements.models import Reevaluation

    job = Reevaluation.objects.filter(pk=job_id).first()
    if job is None:
        return ""
    return render_to_string("admin/achievements/reevaluation/progress.html", {"job": job})
