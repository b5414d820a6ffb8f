"""The keys the site signs credentials with, and the credentials it has issued."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from django.db import models, transaction
from django.utils import timezone
from joserfc.jwk import RSAKey

from achievements.models import Unlock

KEY_BITS = 2048  # RS256, the algorithm every Open Badges 3.0 verifier supports


class SigningKeyQuerySet(models.QuerySet["SigningKey"]):
    def published(self) -> SigningKeyQuerySet:
        """The keys verifiers may use: every key not retired, newest first."""
        return self.filter(retired_at__isnull=True).order_by("-created_at", "-pk")


class SigningKey(models.Model):
    """An RSA key pair. The newest key not retired signs; every key not retired is
    published, so credentials signed before a rotation still verify. Retiring a
    key stops its credentials verifying (a user downloads theirs again, signed
    by the current key)."""

    kid = models.CharField(max_length=32, unique=True, editable=False)
    private_pem = models.TextField(editable=False)
    public_jwk = models.JSONField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    retired_at = models.DateTimeField(null=True, blank=True)

    objects = SigningKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        state = "retired" if self.retired_at else "published"
        return f"{self.kid} ({state}, from {self.created_at:%Y-%m-%d})"

    @classmethod
    def generate(cls) -> SigningKey:
        key = RSAKey.generate_key(KEY_BITS, private=True)
        public = key.as_dict(private=False)
        return cls.objects.create(
            kid=secrets.token_hex(8),
            private_pem=key.as_pem(private=True).decode(),
            public_jwk={k: public[k] for k in ("kty", "n", "e")},
        )

    @classmethod
    def current(cls) -> SigningKey:
        """The key to sign with, made on first use."""
        key = cls.objects.published().first()
        if key is None:
            with transaction.atomic():
                key = cls.objects.published().select_for_update().first() or cls.generate()
        return key

    def private_key(self) -> RSAKey:
        return RSAKey.import_key(self.private_pem)

    def jwk(self, kid: str) -> dict[str, Any]:
        """The public key as a JWK, named `kid` (the URL it is published at)."""
        return {**self.public_jwk, "kid": kid, "alg": "RS256", "use": "sig"}


class IssuedCredential(models.Model):
    """An Open Badges credential issued for one earning; its id is the credential's.

    Made the first time the user downloads the earning's credential, and the
    same id every time after: a verifier looks the earning up by it, to tell
    a credential still held from one revoked or expired."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    unlock = models.OneToOneField(Unlock, on_delete=models.CASCADE, related_name="credential")
    issued_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"urn:uuid:{self.id}"
