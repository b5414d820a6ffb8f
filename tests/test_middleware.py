"""The site's own middleware: NUL characters in query strings refused with a 400."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model


@pytest.fixture
def admin_client(client, db):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(admin)
    return client


@pytest.mark.parametrize(
    ("url", "name"),
    [
        # A list filter of ours, a lookup the admin allows on any field, a filter
        # of Django's own admin classes, the reports, and a NUL in a name.
        ("/admin/achievements/event/?event_type=%00", "event_type"),
        ("/admin/achievements/reevaluation/?state__exact=queued%00", "state__exact"),
        ("/admin/achievements/badge/?name=%00", "name"),
        ("/admin/auth/user/?username=%00", "username"),
        ("/admin/reports/?badge=%00", "badge"),
        ("/admin/achievements/event/?q=visit&source%00=api", "source\\x00"),
    ],
)
def test_a_nul_character_in_the_query_string_is_a_400_naming_the_parameter(
    admin_client, url, name
):
    response = admin_client.get(url)
    assert response.status_code == 400
    assert response.content.decode() == f"{name}: must not contain NUL characters\n"
    assert "Content-Security-Policy" in response


def test_query_strings_without_one_pass(admin_client):
    response = admin_client.get("/admin/achievements/event/?event_type=visit.created&q=%2500")
    assert response.status_code == 200


def test_the_api_answers_in_its_own_format_whatever_the_query_string(client, db):
    """Django's handler runs the site's middleware for the API too; it passes."""
    response = client.get("/api/v1/events/e-1?x=%00")
    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] == "Authorization"
