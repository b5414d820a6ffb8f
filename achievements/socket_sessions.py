"""Sockets that end with their session, and how many one session or address may hold.

A socket's user is read from its session once, at connect. So that it does
not outlive the session:

- logging out closes every socket of that session at once (a
  `session.ended` push to the user's sockets; those of that session close
  with 4401, which pages show as "signed out" and do not retry);
- a session deleted through the session store (achievements.session_store:
  a flush, or the key cycled by a password change on that browser) closes
  its sockets with 4000 (`session.gone`): the page reconnects at once, with
  whatever cookie it now has, and is signed in or told 4401;
- any other change to the user (its password, active flag, staff flag,
  groups or permissions, its deletion; not the log-in's own `last_login`)
  makes every socket of the user check its session again (`session.check`),
  as the next page load would;
- and each socket checks its session every SOCKET_SESSION_RECHECK_SECONDS
  anyway, which catches expiry and whatever a push did not reach (a row
  deleted behind the store's back, a push lost with Redis down, a log-out in
  the milliseconds between a socket reading its session and joining its
  user's group).

A socket that fails a check is closed with 4000 as well. Pushes go out once
the change commits, so a check never reads the user as it was.

Limits are per web process: the sockets of one session (tabs of one browser)
and of one client address (the connection's, or a trusted proxy's client).
Past either, the socket is closed with 4429 at connect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

from django.conf import settings

from achievements import realtime
from achievements.db import after_commit
from achievements.socket_auth import user_of

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_TOO_MANY_SOCKETS = 4429
# The session changed under the socket: reconnect, and the handshake tells.
CLOSE_RECONNECT = 4000

SESSION_ENDED = "session.ended"  # logged out: 4401
SESSION_GONE = "session.gone"  # deleted or cycled: 4000
SESSION_CHECK = "session.check"
SESSION_MESSAGES = (SESSION_ENDED, SESSION_GONE, SESSION_CHECK)

# Open sockets of this process, per session digest and per client address.
_per_session: Counter[str] = Counter()
_per_address: Counter[str] = Counter()


def digest(session_key: str | None) -> str:
    """A session's name in pushes and counters: never the key itself."""
    if not session_key:
        return ""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def address_of(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class SessionBoundSocket:
    """Mixin for consumers of signed-in users: counted, and closed when the session ends.

    `bind` after the user is known (it may close the socket: then it returns
    False), `unbind` when the socket goes; both are the consumer's to call.
    Session pushes arrive through the consumer's `dispatch` as
    `session_ended` and `session_check`.
    """

    scope: dict[str, Any]
    _session_digest: str = ""
    _bound_user_id: int | None = None
    _counted: tuple[str, str] | None = None
    _recheck_task: asyncio.Task[None] | None = None
    _check_task: asyncio.Task[None] | None = None

    if TYPE_CHECKING:  # the consumer's own

        async def accept(self, subprotocol: str | None = None) -> None: ...

        async def close(
            self, code: int | bool | None = None, reason: str | None = None
        ) -> None: ...

    async def bind(self, user_id: int) -> bool:
        """Count this socket and start its checks; False (and closed) if over a limit."""
        session, address = digest(self.scope.get("session_key")), address_of(self.scope)
        if (
            _per_session[session] >= settings.SOCKETS_PER_SESSION
            or _per_address[address] >= settings.SOCKETS_PER_ADDRESS
        ):
            logger.warning("Socket refused: too many open for one session or address")
            await self.accept()
            await self.close(code=CLOSE_TOO_MANY_SOCKETS)
            return False
        _per_session[session] += 1
        _per_address[address] += 1
        self._counted = (session, address)
        self._session_digest, self._bound_user_id = session, user_id
        self._recheck_task = asyncio.get_running_loop().create_task(self._recheck_forever())
        return True

    def unbind(self) -> None:
        """Stop counting this socket and checking its session; safe to call again."""
        tasks = (self._recheck_task, self._check_task)
        self._recheck_task = self._check_task = None
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        counted, self._counted = self._counted, None
        if counted is not None:
            session, address = counted
            for counter, key in ((_per_session, session), (_per_address, address)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    async def session_ended(self, message: dict[str, Any]) -> None:
        if self._session_digest and message.get("session") == self._session_digest:
            await self._end(CLOSE_NOT_AUTHENTICATED)

    async def session_gone(self, message: dict[str, Any]) -> None:
        if self._session_digest and message.get("session") == self._session_digest:
            await self._end(CLOSE_RECONNECT)

    async def session_check(self, message: dict[str, Any]) -> None:
        # In a task of its own: the hub hands out every push of this process
        # in turn, and must not wait for this socket's database read.
        if self._counted is not None and (self._check_task is None or self._check_task.done()):
            self._check_task = asyncio.get_running_loop().create_task(self._check_once())

    async def _check_once(self) -> None:
        try:
            holds = await self._session_holds()
        except Exception:
            logger.warning("Checking a socket's session failed", exc_info=True)
            return  # the periodic check tries again
        if not holds:
            await self._end(CLOSE_RECONNECT)

    async def _session_holds(self) -> bool:
        user = await user_of(self.scope.get("session_key"))
        if not (user.is_authenticated and user.pk == self._bound_user_id):
            return False
        return await self.still_allowed(user)

    async def still_allowed(self, user: Any) -> bool:
        """Whether the session's user may still hold this socket (a consumer may narrow it)."""
        return True

    async def _end(self, code: int) -> None:
        if self._counted is None:
            return  # already ended (or never bound)
        self.unbind()
        await self.close(code=code)

    async def _recheck_forever(self) -> None:
        interval = settings.SOCKET_SESSION_RECHECK_SECONDS
        # Spread over the interval, so sockets opened together (a deploy's
        # reconnects) do not all check at once.
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:
            try:
                holds = await self._session_holds()
            except Exception:
                # A database hiccup is not a reason to close; try again later.
                logger.warning("Re-checking a socket's session failed", exc_info=True)
                holds = True
            if not holds:
                await self._end(CLOSE_RECONNECT)
                return
            await asyncio.sleep(interval)


def open_sockets() -> tuple[dict[str, int], dict[str, int]]:
    """This process's counts per session digest and per address."""
    return dict(_per_session), dict(_per_address)


# --- what ends or questions a session ------------------------------------


def _push(user_id: Any, message: dict[str, Any]) -> None:
    """Tell the user's sockets, once the change commits (a rolled-back change tells none)."""
    if user_id is not None:
        after_commit(_send, int(user_id), message)


def _send(user_id: int, message: dict[str, Any]) -> None:
    try:
        realtime.send_to_group(realtime.user_group(user_id), [message])
    except Exception:  # best effort: the periodic check closes the socket anyway
        logger.warning("Telling user %s's sockets about their session failed", user_id)


def session_deleted(session_key: str, user_id: Any) -> None:
    """The session store deleted a signed-in session: its sockets reconnect."""
    _push(user_id, {"type": SESSION_GONE, "session": digest(session_key)})


def on_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """user_logged_out: close that session's sockets (sent before the session is flushed)."""
    session = getattr(request, "session", None)
    if user is not None and session is not None and session.session_key:
        _push(user.pk, {"type": SESSION_ENDED, "session": digest(session.session_key)})


def on_user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """post_save of a user: anything but a log-in's own write may end sessions."""
    update_fields = kwargs.get("update_fields")
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    _push(instance.pk, {"type": SESSION_CHECK})


def on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    _push(instance.pk, {"type": SESSION_CHECK})


def on_memberships_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """m2m_changed of a user's groups or permissions: what a socket may watch can change."""
    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    if not reverse:
        _push(instance.pk, {"type": SESSION_CHECK})
        return
    # A group's or permission's users changed: those added or removed, or
    # (before a clear, while they are still there) all of them.
    users = instance.user_set.values_list("pk", flat=True) if action == "pre_clear" else pk_set
    for user_id in users or ():
        _push(user_id, {"type": SESSION_CHECK})
