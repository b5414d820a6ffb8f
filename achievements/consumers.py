from __future__ import annotations

import asyncio
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from achievements import realtime

# A close code in the application range, so a page can tell "not signed in"
# from a network failure. It is sent after accepting: a refused handshake
# reaches the browser as 1006, which the htmx ws extension retries forever.
CLOSE_NOT_AUTHENTICATED = 4401


class LiveConsumer(AsyncWebsocketConsumer):
    """One signed-in page's live connection: pushes toasts and progress as HTML.

    The group comes from the session's user on the server; nothing the client
    sends can change which user's messages it receives.
    """

    group_name: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        realtime.register_server_loop(asyncio.get_running_loop())
        self.group_name = realtime.user_group(user.pk)
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group_name:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Pages only listen. Anything a client sends is ignored rather than
        # trusted; in particular it cannot subscribe to other groups.
        return

    async def progress_updated(self, message: dict[str, Any]) -> None:
        await self.send(
            text_data=render_to_string(
                "achievements/badges.html#progress", {"card": message["card"]}
            )
        )

    async def achievement_unlocked(self, message: dict[str, Any]) -> None:
        context = {"card": message["card"]}
        frame = render_to_string("achievements/badges.html#progress", context)
        frame += render_to_string("achievements/badges.html#toast_frame", context)
        await self.send(text_data=frame)
