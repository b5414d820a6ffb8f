"""Checking a presented credential: is it ours, untouched, current, and still held?

Each check says what it found, in words a person reading the verification
page understands; the outcome is the first thing that fails, or valid.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from achievements.models import Ending
from credentials.issuing import issuer_id
from credentials.models import IssuedCredential, SigningKey
from project.inputs import json_depth_problem

# At most this many characters are read: a credential is a few kilobytes.
MAX_LENGTH = 20_000

VALID = "valid"
OUTCOMES = {
    VALID: _("Valid"),
    "invalid": _("Not valid"),
    "unknown": _("Not issued here"),
    "not_yet": _("Not valid yet"),
    "expired": _("Expired"),
    "revoked": _("Revoked"),
    "lapsed": _("No longer held"),
}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verification:
    outcome: str = VALID
    checks: list[Check] = field(default_factory=list)
    credential: dict[str, Any] | None = None

    @property
    def verified(self) -> bool:
        return self.outcome == VALID

    @property
    def title(self) -> str:
        return str(OUTCOMES[self.outcome])

    def fail(self, outcome: str, name: str, detail: str) -> Verification:
        self.checks.append(Check(name, False, detail))
        if self.outcome == VALID:
            self.outcome = outcome
        return self

    def passed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def as_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "outcome": self.outcome,
            "title": self.title,
            "checks": [
                {"check": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
            "credential": self.credential,
        }


def _text(part: str) -> str:
    """A JWT part decoded; ValueError if it is not base64url of UTF-8, or nests JSON
    too deeply to be parsed safely."""
    text = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
    if json_depth_problem(text):
        raise ValueError("nested too deeply")
    return text


def _segment(part: str) -> Any:
    """A JWT part's JSON; ValueError for anything that is not."""
    return json.loads(_text(part))


def _plain_header(header: dict[str, Any]) -> bool:
    """Only what this site's credentials carry: RS256, a key by URL, nothing critical."""
    return (
        header.get("alg") == "RS256"
        and isinstance(header.get("kid"), str)
        and "crit" not in header
        and all(isinstance(name, str) for name in header)
    )


def verify(token: str, base: str) -> Verification:
    result = Verification()
    token = "".join(token.split())  # pasted text may be wrapped
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_LENGTH:
        return result.fail(
            "invalid",
            "format",
            gettext(
                "This is not a signed credential: expected a JWT, three parts "
                "joined by dots, as in the downloaded .jwt file."
            ),
        )
    try:
        header = _segment(parts[0])
        if not isinstance(header, dict) or not _plain_header(header):
            raise ValueError
        _text(parts[1])  # the payload is parsed by joserfc: it must be safe to parse
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return result.fail("invalid", "format", gettext("The credential's header cannot be read."))
    kid = header.get("kid")
    match = re.search(r"/ob/keys/([0-9a-f]{16})$", kid) if isinstance(kid, str) else None
    key = SigningKey.objects.published().filter(kid=match.group(1)).first() if match else None
    if key is None:
        return result.fail(
            "unknown",
            "key",
            gettext(
                "It is not signed with a key this site publishes: it was signed "
                "elsewhere, or with a key the site has retired."
            ),
        )
    try:
        token_data = jwt.decode(token, RSAKey.import_key(key.public_jwk), algorithms=["RS256"])
    except (JoseError, ValueError, TypeError):
        return result.fail(
            "invalid",
            "signature",
            gettext(
                "The signature does not match: the credential was changed after it was signed."
            ),
        )
    claims = dict(token_data.claims)
    result.passed("signature", gettext("Signed by this site's key %(kid)s.") % {"kid": key.kid})
    result.credential = {
        k: v for k, v in claims.items() if k not in ("iss", "jti", "sub", "nbf", "exp")
    }
    issuer = (
        (claims.get("issuer") or {}).get("id") if isinstance(claims.get("issuer"), dict) else None
    )
    types = claims.get("type") or []
    if (
        issuer != issuer_id(base)
        or claims.get("iss") != issuer
        or "OpenBadgeCredential" not in types
    ):
        return result.fail(
            "unknown", "issuer", gettext("It is not an Open Badges credential from this site.")
        )
    name = claims["issuer"].get("name", issuer)
    result.passed("issuer", gettext("Issued by %(issuer)s.") % {"issuer": name})
    issued = _issued(claims.get("id"))
    if issued is None or claims.get("jti") != claims.get("id"):
        return result.fail("unknown", "record", gettext("This site has no record of issuing it."))
    now = timezone.now()
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if isinstance(nbf, int) and datetime.fromtimestamp(nbf, UTC) > now:
        result.fail("not_yet", "dates", gettext("It is not valid yet."))
    elif isinstance(exp, int) and datetime.fromtimestamp(exp, UTC) <= now:
        when = date_format(timezone.localtime(datetime.fromtimestamp(exp, UTC)), "DATE_FORMAT")
        result.fail("expired", "dates", gettext("It expired on %(when)s.") % {"when": when})
    else:
        result.passed("dates", gettext("It is within its dates of validity."))
    unlock = issued.unlock
    if not unlock.user.is_active:
        result.fail("revoked", "status", gettext("The holder's account is closed."))
    elif unlock.ended_at is not None:
        when = date_format(timezone.localtime(unlock.ended_at), "DATE_FORMAT")
        endings: dict[str, tuple[str, str]] = {
            Ending.REVOKED: ("revoked", gettext("The site took this badge back on %(when)s.")),
            Ending.EXPIRED: ("expired", gettext("The badge expired on %(when)s.")),
            Ending.LAPSED: ("lapsed", gettext("Its holder stopped meeting its rule on %(when)s.")),
        }
        outcome, said = endings.get(unlock.ending, ("revoked", gettext("It ended on %(when)s.")))
        result.fail(outcome, "status", said % {"when": when})
    else:
        result.passed("status", gettext("Its holder still holds the badge."))
    return result


def _issued(credential_id: Any) -> IssuedCredential | None:
    if not isinstance(credential_id, str) or not credential_id.startswith("urn:uuid:"):
        return None
    try:
        pk = uuid.UUID(credential_id.removeprefix("urn:uuid:"))
    except ValueError:
        return None
    return IssuedCredential.objects.select_related("unlock__user").filter(pk=pk).first()
