from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save


class AchievementsConfig(AppConfig):
    name = "achievements"
    verbose_name = "Achievements"

    def ready(self) -> None:
        # Registers the Celery tasks in every process, web ones included:
        # achievements.dispatch sends them by name, as it must not import them.
        from django.utils.translation import gettext

        from achievements import index, progress, tasks  # noqa: F401

        # Measures are described in the language active where they are built.
        progress.install_translator(gettext)
        from achievements.models import (
            Badge,
            BadgeRequirement,
            BadgeTranslation,
            BadgeVersion,
            DedupRule,
            EventType,
        )

        # Everything the index holds: rules, the event type catalogue, dedup rules.
        for model in (Badge, BadgeRequirement, BadgeTranslation, EventType, DedupRule):
            post_save.connect(
                index.invalidate, sender=model, dispatch_uid=f"index-{model.__name__}"
            )
            post_delete.connect(
                index.invalidate, sender=model, dispatch_uid=f"index-del-{model.__name__}"
            )
        # The index knows each badge's latest version, for the unlocks it records.
        post_save.connect(
            index.version_recorded, sender=BadgeVersion, dispatch_uid="index-version"
        )
        # A composite's parts are saved after the requirement itself.
        m2m_changed.connect(
            index.invalidate,
            sender=BadgeRequirement.composite_badges.through,
            dispatch_uid="index-composite-parts",
        )

        # Badges that expire: celery beat runs the schedule (project.settings); in
        # the embedded mode the sweeper's thread does.
        from achievements import dispatch, expiry

        dispatch.run_with_embedded_sweeper(expiry.run_schedule)
        # The users' daily emails: hourly from celery beat, and here after each
        # sweep (between digest hours, a run is two small queries).
        from django.core import checks

        from achievements import digest

        dispatch.run_with_embedded_sweeper(digest.send_due_digests)
        checks.register(digest.check_site_url)

        # Sockets end with their session (achievements.socket_sessions; a
        # deleted session is told by achievements.session_store).
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out

        from achievements import socket_sessions

        user_model = get_user_model()
        user_logged_out.connect(socket_sessions.on_logged_out, dispatch_uid="socket-logout")
        post_save.connect(
            socket_sessions.on_user_saved, sender=user_model, dispatch_uid="socket-user"
        )
        post_delete.connect(
            socket_sessions.on_user_deleted, sender=user_model, dispatch_uid="socket-user-del"
        )
        for relation in ("groups", "user_permissions"):
            m2m_changed.connect(
                socket_sessions.on_memberships_changed,
                sender=getattr(user_model, relation).through,
                dispatch_uid=f"socket-user-{relation}",
            )
