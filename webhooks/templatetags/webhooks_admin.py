"""What the admin's front page says about webhooks: endpoints that were turned off."""

from __future__ import annotations

from django import template

from webhooks.models import Endpoint

register = template.Library()


@register.simple_tag
def turned_off_endpoints() -> list[Endpoint]:
    """Endpoints the sender turned off (not those staff switched off by hand)."""
    return list(Endpoint.objects.filter(is_active=False, disabled_at__isnull=False)[:10])
