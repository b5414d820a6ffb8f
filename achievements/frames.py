"""The HTML a page swaps in when something changes: badge cards, then toasts.

Rendered with the badge page's own partials, so a card pushed over the
socket looks exactly like one the page was served with. Workers render a
user's frame once (achievements.delivery); sockets only send it.
"""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string


def render_frame(cards: list[dict[str, Any]], toasts: list[dict[str, Any]]) -> str:
    """The HTML a page swaps in: the cards, then a toast per unlock."""
    frame = "".join(
        render_to_string("achievements/badges.html#progress", {"card": card}) for card in cards
    )
    return frame + "".join(
        render_to_string("achievements/badges.html#toast_frame", toast) for toast in toasts
    )
