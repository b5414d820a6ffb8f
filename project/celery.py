from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("accolade")
# Every CELERY_* Django setting configures the app, so there is one place for
# configuration and the environment readers validate it.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
