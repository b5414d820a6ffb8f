"""Django's database sessions, telling a deleted session's sockets to go.

SESSION_ENGINE names this module. A session deleted through the store (a
log-out's flush, the key cycled at log-in or by a password change, code
calling `SessionStore.delete`) has its sockets reconnect
(achievements.socket_sessions), so none goes on as a session that no longer
exists. `clearsessions` still deletes expired rows in bulk, unseen: their
sockets are found by the periodic check.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

from achievements import socket_sessions


class SessionStore(DatabaseSessionStore):
    def delete(self, session_key: str | None = None) -> None:
        key = self.session_key if session_key is None else session_key
        user_id: Any = None
        if key:
            row = self.model.objects.filter(session_key=key).only("session_data").first()
            if row is not None:
                user_id = self.decode(row.session_data).get(SESSION_KEY)
        super().delete(session_key)
        if key and user_id is not None:
            socket_sessions.session_deleted(key, user_id)
