"""Webhooks out: the endpoints staff configure, and the outbox of messages for them.

A message is one thing that happened (a ledger entry: an unlock, a tier, a
revocation, an expiry, a lapse), written in the transaction that made it
happen, with one delivery per endpoint that asked for its kind. Deliveries
are sent and retried by `webhooks.sending`; every try is an `Attempt`, the
endpoint's delivery log.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Kind(models.TextChoices):
    BADGE_UNLOCKED = "badge.unlocked", "Badge unlocked (earned or granted)"
    TIER_REACHED = "badge.tier_reached", "Tier reached"
    BADGE_REVOKED = "badge.revoked", "Badge revoked by staff"
    BADGE_EXPIRED = "badge.expired", "Badge expired"
    BADGE_LAPSED = "badge.lapsed", "Badge lost: its rule no longer holds"


# Not a kind an endpoint subscribes to: sent to one endpoint when staff ask.
TEST_KIND = "webhook.test"


def new_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class EndpointQuerySet(models.QuerySet["Endpoint"]):
    def active(self) -> EndpointQuerySet:
        return self.filter(is_active=True)


class Endpoint(models.Model):
    """A receiver of signed messages: its address, the kinds it wants, its health."""

    url = models.URLField(
        "URL",
        max_length=2000,
        help_text="Where messages are POSTed. http or https; checked again before every send.",
    )
    description = models.CharField(max_length=200, blank=True)
    kinds = models.JSONField(
        default=list, help_text="The kinds of message this endpoint receives."
    )
    include_silent = models.BooleanField(
        "include quiet changes",
        default=False,
        help_text=(
            "Also send changes applied quietly: re-evaluations of history run without "
            "notifying, and events backfilled from long ago. Off, an endpoint hears what "
            "users are told of."
        ),
    )
    secret = models.CharField(
        max_length=100,
        default=new_secret,
        help_text="The signing secret (Standard Webhooks). Rotate it with the action.",
    )
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Until then, messages are signed with the previous secret too.",
    )
    is_active = models.BooleanField(
        "enabled",
        default=True,
        help_text="Off, nothing is sent; messages wait, and go once it is on again.",
    )
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="The first failure since the last success."
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    # While it fails, when to next try its oldest waiting message early, to
    # learn that it is back (webhooks.sending.probe_delay).
    probe_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # Whoever holds the lease is the one sender of this endpoint's messages
    # (webhooks.sending.claim_endpoint): one chunk in flight per endpoint, so a
    # slow receiver holds one worker, not all of them.
    lease = models.CharField(max_length=32, blank=True, default="")
    leased_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["url", "pk"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.description or self.url

    def secrets_in_use(self, now: datetime) -> list[str]:
        """The secrets a message is signed with now: the current one, and the
        previous one during its grace period after a rotation."""
        if (
            self.previous_secret
            and self.previous_secret_until
            and self.previous_secret_until > now
        ):
            return [self.secret, self.previous_secret]
        return [self.secret]

    def rotate_secret(self, now: datetime, grace: timedelta) -> None:
        self.previous_secret, self.previous_secret_until = self.secret, now + grace
        self.secret = new_secret()
        self.save(update_fields=["secret", "previous_secret", "previous_secret_until"])

    def enable(self) -> None:
        """On again, with a clean bill of health; what waited for it is due now."""
        self.is_active = True
        self.disabled_at = None
        self.disabled_reason = ""
        self.failing_since = None
        self.consecutive_failures = 0
        self.probe_at = None
        self.save(
            update_fields=[
                "is_active",
                "disabled_at",
                "disabled_reason",
                "failing_since",
                "consecutive_failures",
                "probe_at",
            ]
        )
        self.deliveries.filter(status=Status.PENDING).update(next_attempt_at=timezone.now())


class Message(models.Model):
    """One thing to tell receivers, with the id they deduplicate by (`webhook-id`).

    A ledger entry's message id is made from its unlock and kind, which
    happen once each, so the same fact never goes out under two ids.
    """

    id = models.CharField(primary_key=True, max_length=64)
    kind = models.CharField(max_length=32)
    payload = models.JSONField(help_text="The body's `data`.")
    silent = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.id

    def body(self) -> dict[str, Any]:
        """What is POSTed, as Standard Webhooks lays it out: type, timestamp, data."""
        return {
            "type": self.kind,
            "timestamp": self.created_at.isoformat().replace("+00:00", "Z"),
            "data": self.payload,
        }


class Status(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed: out of retries"


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def due(self, now: datetime) -> DeliveryQuerySet:
        return self.filter(status=Status.PENDING, next_attempt_at__lte=now)


class Delivery(models.Model):
    """One message for one endpoint, until it is delivered or out of retries."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["message", "endpoint"], name="one_delivery_each"),
        ]
        indexes = [
            # The sender's question: what of this endpoint is due, oldest first.
            models.Index(
                fields=["endpoint", "next_attempt_at", "id"],
                name="delivery_due",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.endpoint}"

    def send_again(self, now: datetime) -> None:
        """Queue it once more, with a fresh set of retries."""
        self.status, self.attempts, self.next_attempt_at = Status.PENDING, 0, now
        self.save(update_fields=["status", "attempts", "next_attempt_at"])


class Attempt(models.Model):
    """One try at a delivery: the delivery log."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="tries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    probe = models.BooleanField(
        default=False,
        help_text=(
            "Tried early, off its schedule, to learn whether a failing endpoint is back; "
            "a failed probe does not use up one of the delivery's retries."
        ),
    )
    error = models.CharField(max_length=300, blank=True)
    response_excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["endpoint", "at"], name="attempt_endpoint_at")]

    def __str__(self) -> str:
        return f"{self.delivery} at {self.at:%Y-%m-%d %H:%M:%S}"
