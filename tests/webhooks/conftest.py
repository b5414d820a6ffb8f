"""The webhook tests' receiver on 127.0.0.1, and an endpoint that sends to it."""

from __future__ import annotations

import pytest

from tests.webhooks.receiver import Receiver
from webhooks.models import Endpoint, Kind


@pytest.fixture
def receiver(settings):
    settings.ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def endpoint(db, receiver):
    return Endpoint.objects.create(
        url=receiver.url, kinds=[kind.value for kind in Kind], description="CRM"
    )
