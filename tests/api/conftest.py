from __future__ import annotations

import pytest

from achievements.models import EventType
from api.models import ApiKey


@pytest.fixture
def api_key(db) -> str:
    EventType.objects.get_or_create(name="visit.created")
    EventType.objects.get_or_create(name="image.posted")
    _, key = ApiKey.issue("tests")
    return key


@pytest.fixture
def api(client, api_key):
    """The test client with the API key sent on every request."""

    class Api:
        def post(self, body, *, content_type="application/json", **extra):
            return client.post(
                "/api/v1/events",
                body,
                content_type=content_type,
                HTTP_AUTHORIZATION=f"Bearer {api_key}",
                **extra,
            )

        def get(self, path):
            return client.get(path, HTTP_AUTHORIZATION=f"Bearer {api_key}")

    return Api()
