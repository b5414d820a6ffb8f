"""Open Badges 3.0 credentials for earnings, signed as JWTs (VC-JOSE).

A credential is the OpenBadgeCredential document (W3C Verifiable Credentials
2.0 with the Open Badges 3.0 context): the site as issuer, the earning's
moment as `validFrom` (and its expiry as `validUntil` for a badge that
expires), the achievement (the badge, or the tier) with its criteria. It is
the JWT's payload, with the registered claims the spec maps onto it (`iss`,
`jti`, `sub`, `nbf`, `exp`), signed RS256. The header names the key by the
URL it is published at (`kid`, a JWK there); /.well-known/jwks.json lists
every published key.

The recipient is named by an identifier derived from the user's id and the
site's secret, so a credential shown to someone tells them nothing else
about the account.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.urls import reverse
from joserfc import jwt

from achievements.models import Badge, Unlock, format_number
from achievements.progress import unit_name
from credentials.models import IssuedCredential, SigningKey

CONTEXTS = [
    "https://www.w3.org/ns/credentials/v2",
    "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json",
]
MEDIA_TYPE = "application/vc+jwt"


def issuer_name() -> str:
    return getattr(settings, "ACCOLADE_ISSUER_NAME", "Accolade")


def issuer_id(base: str) -> str:
    return base + reverse("credentials:issuer")


def key_url(base: str, key: SigningKey) -> str:
    return base + reverse("credentials:key", args=[key.kid])


def issuer_profile(base: str) -> dict[str, Any]:
    return {
        "id": issuer_id(base),
        "type": ["Profile"],
        "name": issuer_name(),
        "url": base + "/",
    }


def subject_id(user_id: int) -> str:
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"credential-subject:{user_id}".encode(), hashlib.sha256
    ).digest()
    return f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}"


def achievement(badge: Badge, tier: int, base: str) -> dict[str, Any]:
    """The achievement an earning is of: the badge, or one of its tiers."""
    tiers = badge.tier_list()
    requirements = list(badge.requirements.all())
    if tier and 0 < tier <= len(tiers):
        name, threshold = tiers[tier - 1]
        path = reverse("credentials:tier", args=[badge.key, tier])
        criteria = [f"{format_number(threshold)} {unit_name(requirements[0].spec)}"]
        title = f"{badge.name} ({name})"
    else:
        path = reverse("credentials:achievement", args=[badge.key])
        criteria = [f"{format_number(r.threshold)} {r.unit_label()}" for r in requirements]
        title = badge.name
    document: dict[str, Any] = {
        "id": base + path,
        "type": ["Achievement"],
        "name": title,
        "description": badge.description or title,
        "criteria": {"narrative": "Reached: " + "; ".join(criteria) + "."},
    }
    if not badge.hidden and not badge.is_segmented:
        document["image"] = {
            "id": base + reverse("achievements:badge_image", args=[badge.key]),
            "type": "Image",
        }
    return document


def _moment(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def document(issued: IssuedCredential, base: str) -> dict[str, Any]:
    unlock = issued.unlock
    badge = unlock.badge
    subject: dict[str, Any] = {
        "id": subject_id(unlock.user_id),
        "type": ["AchievementSubject"],
        "achievement": achievement(badge, unlock.tier, base),
    }
    credential: dict[str, Any] = {
        "@context": CONTEXTS,
        "id": f"urn:uuid:{issued.id}",
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "issuer": issuer_profile(base),
        "validFrom": _moment(unlock.unlocked_at),
        "name": subject["achievement"]["name"],
        "credentialSubject": subject,
    }
    # Only a fixed expiry: a badge held while its rule holds has none to promise.
    if badge.valid_days and unlock.expires_at:
        credential["validUntil"] = _moment(unlock.expires_at)
    return credential


def sign(credential: dict[str, Any], base: str) -> str:
    key = SigningKey.current()
    kid = key_url(base, key)
    claims = {
        **credential,
        "iss": credential["issuer"]["id"],
        "jti": credential["id"],
        "sub": credential["credentialSubject"]["id"],
        "nbf": int(datetime.fromisoformat(credential["validFrom"]).timestamp()),
    }
    if "validUntil" in credential:
        claims["exp"] = int(datetime.fromisoformat(credential["validUntil"]).timestamp())
    header = {"alg": "RS256", "typ": "vc+jwt", "kid": kid}
    return jwt.encode(header, claims, key.private_key(), algorithms=["RS256"])


def credential_for(unlock: Unlock, base: str) -> str:
    """The signed credential of a held earning (the same credential id every time)."""
    try:
        issued, _ = IssuedCredential.objects.get_or_create(unlock=unlock)
    except IntegrityError:  # a second download made it at the same moment
        issued = IssuedCredential.objects.get(unlock=unlock)
    issued.unlock = unlock
    return sign(document(issued, base), base)
