from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings

from achievements.models import EventType
from api.models import SCOPES, ApiKey


@pytest.fixture
def api_client() -> Client:
    """A test client with the middleware the one-hop handler runs for API paths
    (settings.API_MIDDLEWARE, project/handlers.py), not the site's that Django's
    test client runs: a view that needs the site's (a session, the user,
    messages) fails here as it would in production with that handler."""
    client = Client()
    with override_settings(MIDDLEWARE=settings.API_MIDDLEWARE):
        client.handler.load_middleware()
    return client


@pytest.fixture
def api_key(db) -> str:
    EventType.objects.get_or_create(name="visit.created")
    EventType.objects.get_or_create(name="image.posted")
    # As a key made before producers and scopes: the site's own producer, every scope.
    _, key = ApiKey.issue("tests", producer="app", scopes=list(SCOPES))
    return key


@pytest.fixture
def api(api_client, api_key):
    """The test client with the API key sent on every request."""

    class Api:
        def post(self, body, *, content_type="application/json", **extra):
            return api_client.post(
                "/api/v1/events",
                body,
                content_type=content_type,
                HTTP_AUTHORIZATION=f"Bearer {api_key}",
                **extra,
            )

        def get(self, path):
            return api_client.get(path, HTTP_AUTHORIZATION=f"Bearer {api_key}")

    return Api()
