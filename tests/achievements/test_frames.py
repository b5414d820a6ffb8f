"""The frames pages swap in: what scripts and stylesheets read in them stays machine-readable."""

from __future__ import annotations

from achievements.frames import render_frame


def test_numbers_read_by_scripts_and_styles_are_never_localized(settings):
    """With thousand separators on, an unlock id of 12345 became "12,345", and the
    page could not acknowledge the toast; class names and aria-valuenow too."""
    settings.USE_THOUSAND_SEPARATOR = True
    card = {
        "id": 1,
        "key": "steps",
        "name": "Steps",
        "percent": 40,
        "tier": "Gold",
        "tier_level": 2,
        "tier_names": ["Silver", "Gold", "Platinum"],
        "current": "4,000",
        "target": "10,000",
        "completed": True,
        "ongoing": True,
        "requirements": [],
    }
    html = render_frame([card], [{"unlock_id": 12345, "card": card, "headline": "Gold"}])
    assert 'data-unlock-id="12345"' in html
    assert 'aria-valuenow="40"' in html
    assert "pct-40" in html
    assert "tier-2" in html
    assert "4,000 of 10,000" in html  # numbers for people stay as the card formatted them
