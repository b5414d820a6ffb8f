"""Workflows that span several models, each in one transaction."""

from __future__ import annotations

from django.db import transaction

from achievements import dispatch
from achievements.db import after_commit
from achievements.models import Event, ExternalIdentity


class LinkConflict(ValueError):
    pass


def link_external_identity(external_id: str, user_id: int) -> int:
    """Link a producer's user id to a site user and evaluate what waited for it.

    Returns how many waiting events were handed to the evaluator. Linking an
    id to the user it is already linked to is a no-op; to another user, or a
    user who already has a different id, is refused.
    """

    with transaction.atomic():
        ExternalIdentity.objects.get_or_create(external_id=external_id)
        identity = ExternalIdentity.objects.select_for_update().get(external_id=external_id)
        if identity.user_id not in (None, user_id):
            raise LinkConflict(f"{external_id!r} is already linked to another user")
        other = ExternalIdentity.objects.filter(user_id=user_id).exclude(pk=identity.pk).first()
        if other is not None:
            raise LinkConflict(f"that user is already linked to {other.external_id!r}")
        if identity.user_id is None:
            identity.link_to(user_id)
        waiting = list(
            Event.objects.waiting_for_user()
            .filter(external_user_id=external_id)
            .order_by("occurred_at", "pk")
            .values_list("pk", flat=True)
        )
        Event.objects.filter(pk__in=waiting).update(user_id=user_id)
        if waiting:
            after_commit(dispatch.enqueue_evaluations, waiting)
    return len(waiting)
