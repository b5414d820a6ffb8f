from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.text import slugify

from api.schema import SOURCE_PATTERN

KEY_PREFIX = "acc_"

# What a key may do, chosen when it is made.
SCOPES = {
    "events:write": "Send events",
    "events:read": "Read the status of its own producer's events",
    "badges:read": "Read any user's badges and their history",
    "badges:write": "Grant and revoke users' badges, with a reason",
    "metrics:read": "Read /metrics",
}
# A new key's scopes unless others are chosen: send events, and follow them.
DEFAULT_SCOPES = ["events:write", "events:read"]
# Producer names are written as event sources are.
PRODUCER_PATTERN = SOURCE_PATTERN


def default_producer(name: str) -> str:
    """The producer a key named `name` speaks for unless told: the name as a slug.

    Never the site's own "app" by accident: sharing it is chosen by name.
    """
    slug = slugify(name)[:64].strip("-_") or "producer"
    return "app-key" if slug == "app" else slug


def default_scopes() -> list[str]:
    return list(DEFAULT_SCOPES)


def validate_scopes(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("Choose at least one scope.")
    unknown = [scope for scope in value if scope not in SCOPES]
    if unknown:
        raise ValidationError(
            f"Unknown scope(s): {', '.join(map(str, unknown))}; choose from {', '.join(SCOPES)}."
        )


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: there is nothing to
    # guess that a slow hash would protect.
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A bearer key for a service that sends events. Only its hash is stored.

    A key speaks for one producer: the events it sends are that producer's,
    their ids unique among that producer's only, and it reads only that
    producer's events. Several keys may share a producer (a rotation). Its
    scopes say what it may do at all.
    """

    name = models.CharField(max_length=100, unique=True, help_text="Which service uses it.")
    producer = models.CharField(
        max_length=64,
        validators=[
            RegexValidator(
                PRODUCER_PATTERN,
                "Use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit.",
            )
        ],
        help_text="The producer this key speaks for: its events' ids are this producer's "
        "own, and it reads only this producer's events. 'app' is the site's own.",
    )
    scopes = models.JSONField(
        default=default_scopes,
        validators=[validate_scopes],
        help_text="What the key may do: " + "; ".join(f"{k}: {v}" for k, v in SCOPES.items()),
    )
    prefix = models.CharField(
        max_length=16, editable=False, help_text="The key's first characters, to recognise it."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(
        cls,
        name: str,
        *,
        producer: str | None = None,
        scopes: list[str] | None = None,
        created_by_id: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key (for the producer named like the key, unless told); the plain
        key is returned once and never stored. ValidationError names a bad field."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        api_key = cls(
            name=name,
            producer=producer or default_producer(name),
            scopes=default_scopes() if scopes is None else list(dict.fromkeys(scopes)),
            prefix=key[:12],
            key_hash=hash_key(key),
            created_by_id=created_by_id,
        )
        api_key.full_clean(exclude=["key_hash", "prefix"])
        api_key.save()
        return api_key, key

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
