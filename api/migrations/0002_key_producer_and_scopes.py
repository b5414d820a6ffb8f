# Keys get a producer and scopes. Keys made before this speak for "app", the
# producer every event recorded before got (achievements 0017), and keep
# every scope: they go on doing all they did, in the one namespace they had.

import django.core.validators
from django.db import migrations, models

import api.models

EVERY_SCOPE = ["events:write", "events:read", "badges:read", "metrics:read"]


def every_scope():
    return list(EVERY_SCOPE)


class Migration(migrations.Migration):

    dependencies = [
        ("api", "0001_initial"),
        ("achievements", "0017_event_id_per_producer"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="producer",
            field=models.CharField(
                default="app",
                help_text="The producer this key speaks for: its events' ids are this "
                "producer's own, and it reads only this producer's events. 'app' is the "
                "site's own.",
                max_length=64,
                validators=[
                    django.core.validators.RegexValidator(
                        "^[A-Za-z0-9][A-Za-z0-9._:\\-]{0,63}$",
                        "Use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter "
                        "or digit.",
                    )
                ],
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="apikey",
            name="scopes",
            field=models.JSONField(default=every_scope),
        ),
        migrations.AlterField(
            model_name="apikey",
            name="scopes",
            field=models.JSONField(
                default=api.models.default_scopes,
                help_text="What the key may do: events:write: Send events; events:read: Read "
                "the status of its own producer's events; badges:read: Read any user's "
                "badges; metrics:read: Read /metrics",
                validators=[api.models.validate_scopes],
            ),
        ),
    ]
