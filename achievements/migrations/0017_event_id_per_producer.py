# Event ids become each producer's own: unique per (producer, event_id).
# Every event recorded before gets the producer "app", and so do API keys made
# before (api 0002), so existing keys keep the one namespace they had.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("achievements", "0016_view_metrics_permission"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="producer",
            field=models.CharField(
                default="app",
                db_default="app",
                help_text="Who sent it: 'app' for the site's own calls, else the producer its "
                "API key speaks for. Event ids are the producer's own: unique per producer.",
                max_length=64,
            ),
        ),
        migrations.AlterField(
            model_name="event",
            name="event_id",
            field=models.CharField(
                help_text="The producer's id; a repeat from it is a duplicate.", max_length=128
            ),
        ),
        # The new uniqueness first, then the old one goes.
        migrations.AddConstraint(
            model_name="event",
            constraint=models.UniqueConstraint(
                fields=("producer", "event_id"), name="event_id_per_producer"
            ),
        ),
        migrations.RemoveConstraint(
            model_name="event",
            name="achievements_event_event_id_key",
        ),
    ]
