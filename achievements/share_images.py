"""The picture a link preview shows for a badge (Open Graph, 1200 × 630 PNG).

Drawn with Pillow from the badge's name, description and tier: no emoji font
is assumed on the server, so the medal carries the name's first letter.
Only badges anyone may see get one (active, not hidden, not segmented).
"""

from __future__ import annotations

import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

SIZE = (1200, 630)
BACKGROUND = (29, 27, 46)
ACCENT = (138, 108, 240)
GOLD = (240, 193, 75)
TEXT = (255, 255, 255)
MUTED = (207, 203, 230)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def badge_image(name: str, description: str, tiers: list[str], *, version: str) -> bytes:
    """The PNG for a badge; `version` (when the badge last changed) keys the cache."""
    return _draw(name, description, tuple(tiers), version)


@lru_cache(maxsize=256)
def _draw(name: str, description: str, tiers: tuple[str, ...], version: str) -> bytes:
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    # A medal: ribbon, a gold disc, the name's first letter.
    draw.polygon([(180, 120), (240, 120), (270, 230), (210, 230)], fill=ACCENT)
    draw.polygon([(300, 120), (360, 120), (330, 230), (270, 230)], fill=(91, 60, 196))
    draw.ellipse((150, 200, 390, 440), fill=GOLD, outline=(217, 154, 0), width=10)
    initial = (name.strip()[:1] or "A").upper()
    draw.text((270, 320), initial, font=_font(120), fill=BACKGROUND, anchor="mm")
    x = 460
    draw.text((x, 150), "BADGE", font=_font(30), fill=GOLD)
    title = textwrap.wrap(name, width=22)[:2] or [""]
    y = 195
    for line in title:
        draw.text((x, y), line, font=_font(64), fill=TEXT)
        y += 76
    for line in textwrap.wrap(description, width=40)[:3]:
        draw.text((x, y + 10), line, font=_font(34), fill=MUTED)
        y += 46
    if tiers:
        draw.text((x, y + 30), " · ".join(tiers), font=_font(32), fill=GOLD)
    draw.text((x, 540), "Accolade", font=_font(34), fill=ACCENT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
