"""The badge ledger, and unlocks that can end (revoked, expired) and be earned again.

Every unlock already made becomes an "earned" entry of the ledger, so the
history of each user's badges starts complete.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('achievements', '0017_event_id_per_producer'),
        ('api', '0003_badges_write_scope'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='LedgerEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('earned', 'Earned'), ('granted', 'Granted by staff'), ('revoked', 'Revoked by staff'), ('expired', 'Expired')], max_length=8)),
                ('period', models.CharField(blank=True, default='', max_length=32)),
                ('tier', models.PositiveSmallIntegerField(default=0)),
                ('at', models.DateTimeField(default=django.utils.timezone.now, help_text='When it took effect.')),
                ('event_ids', models.JSONField(blank=True, default=list, help_text="Earnings: the producer's ids of the events it cites.")),
                ('reason', models.TextField(blank=True)),
            ],
            options={
                'verbose_name': 'ledger entry',
                'verbose_name_plural': 'ledger',
                'ordering': ['-at', '-id'],
            },
        ),
        migrations.RemoveConstraint(
            model_name='unlock',
            name='unique_unlock',
        ),
        migrations.AddField(
            model_name='unlock',
            name='ended_at',
            field=models.DateTimeField(blank=True, help_text='When it was revoked or expired; empty while held.', null=True),
        ),
        migrations.AddField(
            model_name='unlock',
            name='ending',
            field=models.CharField(blank=True, choices=[('revoked', 'Revoked'), ('expired', 'Expired')], db_default='', default='', max_length=8),
        ),
        migrations.AddField(
            model_name='unlock',
            name='granted',
            field=models.BooleanField(db_default=False, default=False, help_text='Granted by staff, not earned.'),
        ),
        migrations.AddField(
            model_name='userbadge',
            name='granted',
            field=models.BooleanField(db_default=False, default=False, help_text='The first earning the user holds was granted by staff.'),
        ),
        migrations.AddField(
            model_name='userbadge',
            name='withheld',
            field=models.JSONField(blank=True, db_default=models.Value([], output_field=models.JSONField()), default=list, help_text='Earnings staff revoked, which the rule does not award again until staff grant them: the periods of a repeatable badge, or [""] for the whole badge.'),
        ),
        migrations.AddConstraint(
            model_name='unlock',
            constraint=models.UniqueConstraint(condition=models.Q(('ended_at__isnull', True)), fields=('user', 'badge', 'period', 'tier'), name='unique_held_unlock'),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='actor',
            field=models.ForeignKey(blank=True, help_text='Grants and revocations: the staff member who made it.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='api_key',
            field=models.ForeignKey(blank=True, help_text='Grants and revocations made through the API: the key.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='api.apikey'),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='badge',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='ledger', to='achievements.badge'),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='unlock',
            field=models.ForeignKey(help_text='The earning this entry started or ended.', on_delete=django.db.models.deletion.CASCADE, related_name='ledger', to='achievements.unlock'),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='user',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='badge_ledger', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='version',
            field=models.ForeignKey(blank=True, help_text='Earnings: the rule version that earned it.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='achievements.badgeversion'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['user', 'badge', 'at'], name='ledger_user_badge'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['kind', 'at'], name='ledger_kind_at'),
        ),
        migrations.RunSQL(
            """
            INSERT INTO achievements_ledgerentry
                (user_id, badge_id, unlock_id, kind, period, tier, at, version_id, event_ids,
                 reason)
            SELECT user_id, badge_id, id, 'earned', period, tier, unlocked_at, version_id,
                event_ids, ''
            FROM achievements_unlock
            """,
            migrations.RunSQL.noop,
        ),
    ]
