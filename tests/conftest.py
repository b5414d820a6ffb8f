from __future__ import annotations

import pytest

from tests.factories import make_user


@pytest.fixture
def owner(db):
    """The user whose actions a test is about."""
    return make_user(username="owner")


@pytest.fixture
def second_user(db):
    """Another signed-in user, who must never see the owner's progress."""
    return make_user(username="second")


@pytest.fixture
def staff_user(db):
    return make_user(username="staff", is_staff=True)
