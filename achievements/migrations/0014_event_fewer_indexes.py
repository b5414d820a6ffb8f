"""Fewer indexes on the events table: every recorded event updated twelve.

The partial indexes that replace some of them were built by 0013, without
blocking inserts; this drops what they replace.

- event_id: unique by a named constraint instead of unique=True, which on
  PostgreSQL also built a LIKE (varchar_pattern_ops) index nothing uses.
  The unique index itself is kept as it is (the constraint keeps the name
  PostgreSQL gave it); only the LIKE index is dropped.
- user: no index of its own; event_user_occurred starts with it.
- external_user_id: only events still waiting are looked up by it (a link,
  the API's pending count), so a partial index replaces the full one and
  its LIKE twin.
- fingerprint: only events of a type with a de-duplication rule have one,
  looked up with their time; a partial index replaces the full one and its
  LIKE twin.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

LIKE_INDEX = "achievements_event_event_id_92ace1d2_like"
USER_INDEX = "achievements_event_user_id_0bb90759"


def drop_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {LIKE_INDEX}")


def create_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {LIKE_INDEX} "
            "ON achievements_event (event_id varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("achievements", "0013_event_partial_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="event_id",
                    field=models.CharField(
                        help_text="The producer's id; a repeat is a duplicate.", max_length=128
                    ),
                ),
                migrations.AddConstraint(
                    model_name="event",
                    constraint=models.UniqueConstraint(
                        fields=("event_id",), name="achievements_event_event_id_key"
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_like_index, create_like_index)],
        ),
        migrations.AlterField(
            model_name="event",
            name="external_user_id",
            field=models.CharField(
                blank=True,
                help_text="The producer's id for the user, for events that came through the API.",
                max_length=128,
            ),
        ),
        migrations.AlterField(
            model_name="event",
            name="fingerprint",
            field=models.CharField(
                blank=True,
                help_text="Hash of user, type and the dedup rule's payload key, when a rule applies.",
                max_length=64,
            ),
        ),
        # Only the index goes: Django's AlterField would also drop and re-add
        # the foreign key, checking every row again.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="user",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text=(
                            "Empty while the producer's user id is not linked to a site user yet."
                        ),
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="achievement_events",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX IF EXISTS {USER_INDEX}",
                    f"CREATE INDEX IF NOT EXISTS {USER_INDEX} ON achievements_event (user_id)",
                )
            ],
        ),
    ]
