"""Two partial indexes on the events table, built without blocking inserts.

They replace full indexes that 0014 drops: external_user_id is only looked
up among events still waiting (a link, the API's pending count), and
fingerprint only for de-duplicated types, with the event's time. On
PostgreSQL they are built CONCURRENTLY, so recording goes on while a large
events table is read for them (the migration cannot run in a transaction
for that); elsewhere, as usual.
"""

from django.db import migrations, models


class AddIndexWithoutBlocking(migrations.AddIndex):
    """AddIndex, CONCURRENTLY on PostgreSQL (django.contrib.postgres's
    AddIndexConcurrently refuses other databases, and the demo runs on SQLite)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.add_index(model, self.index, concurrently=True)
        else:
            schema_editor.add_index(model, self.index)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.remove_index(model, self.index, concurrently=True)
        else:
            schema_editor.remove_index(model, self.index)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("achievements", "0012_report_rollups"),
    ]

    operations = [
        AddIndexWithoutBlocking(
            model_name="event",
            index=models.Index(
                condition=models.Q(("processed_at__isnull", True)),
                fields=["external_user_id"],
                name="event_waiting_external",
            ),
        ),
        AddIndexWithoutBlocking(
            model_name="event",
            index=models.Index(
                condition=models.Q(("fingerprint", ""), _negated=True),
                fields=["fingerprint", "occurred_at"],
                name="event_fingerprint",
            ),
        ),
    ]
