"""The profile admin: a user's time zone and segment attributes."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from accounts.models import Profile


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "This JSON is nested too deeply (more than 32 levels)."),
        ('{"plan": "pro\\u0000"}', "plan: must not contain NUL characters."),
        ('{"plan": "\\ud83d"}', "plan: must not contain unpaired surrogates"),
    ],
)
def test_attributes_nested_too_deeply_or_unstorable_are_refused(
    client, owner, attributes, message
):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(admin)
    response = client.post(
        "/admin/accounts/profile/add/",
        {"user": owner.pk, "time_zone": "UTC", "attributes": attributes},
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Profile.objects.exists()
