"""The webhooks' admin as staff use it, and the addresses a staff form may not send to."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from standardwebhooks.webhooks import Webhook

from tests.factories import make_images_badge
from tests.webhooks.test_webhooks import _post
from webhooks.addresses import Refused, resolve
from webhooks.models import Attempt, Delivery, Endpoint, Status

CHANGELIST = "/admin/webhooks/endpoint/"


@pytest.fixture
def staff(db) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


def _add(staff: Client, url: str):
    return staff.post(
        reverse("admin:webhooks_endpoint_add"),
        {"url": url, "description": "", "kinds": ["badge.unlocked"], "is_active": "on"},
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        # IPv6 forms that carry an IPv4 address: NAT64, 6to4, IPv4-translated.
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "link-local"),
        ("http://[2002:7f00:1::]/hook", "loopback"),
        ("http://[::ffff:0:a00:1]/hook", "private"),
        ("http://0.0.0.0/hook", "private or reserved"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("https://user:secret@example.com/hook", "user name or password"),
        ("https://no-such-host.invalid/hook", "could not be resolved"),
    ],
)
def test_a_staff_form_may_not_point_a_webhook_inside_the_network(staff, url, why):
    response = _add(staff, url)
    assert response.status_code == 200  # the form again, with the error
    errors = response.context["adminform"].form.errors["url"]
    assert why in errors[0] and errors[0].startswith("This URL "), errors
    assert not Endpoint.objects.exists()


def test_a_setting_allows_receivers_inside_the_network(staff, settings):
    settings.ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    response = _add(staff, "http://127.0.0.1:9/hook")
    assert response.status_code == 302
    endpoint = Endpoint.objects.get()
    assert endpoint.kinds == ["badge.unlocked"] and endpoint.secret.startswith("whsec_")
    # Even so, never multicast nor the unspecified address.
    with pytest.raises(Refused):
        resolve("http://0.0.0.0/hook")
    with pytest.raises(Refused):
        resolve("http://224.0.0.1/hook")


def test_an_endpoint_needs_a_kind(staff, settings):
    settings.ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    response = staff.post(reverse("admin:webhooks_endpoint_add"), {"url": "http://127.0.0.1:9/"})
    assert "kinds" in response.context["adminform"].form.errors
    assert not Endpoint.objects.exists()


def test_an_address_refused_later_is_refused_at_the_send_too(
    owner, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    assert receiver.received == []
    [attempt] = Attempt.objects.all()
    assert attempt.error.startswith("refused: resolves to 127.0.0.1, a loopback address")
    assert Delivery.objects.get().status == Status.PENDING  # kept, should the setting change


def test_the_endpoint_page_shows_its_health_and_delivery_log(
    staff, owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.status, receiver.answer = 500, b"database is down"
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    page = staff.get(
        reverse("admin:webhooks_endpoint_change", args=[endpoint.pk])
    ).content.decode()
    assert "Failing since" in page and "answered HTTP 500" in page
    assert "database is down" in page and " ms</td>" in page
    listing = staff.get(CHANGELIST).content.decode()
    assert "CRM" in listing and "Failing since" in listing
    assert staff.get(reverse("admin:webhooks_delivery_changelist")).status_code == 200
    delivery = Delivery.objects.get()
    detail = staff.get(
        reverse("admin:webhooks_delivery_change", args=[delivery.pk])
    ).content.decode()
    assert "badge.unlocked" in detail and "database is down" in detail
    assert staff.get(reverse("admin:webhooks_attempt_changelist")).status_code == 200


def test_send_a_test_message_from_the_list(staff, endpoint, receiver):
    response = staff.post(
        CHANGELIST, {"action": "send_test_message", "_selected_action": [endpoint.pk]}, follow=True
    )
    assert "the test message was delivered (HTTP 204" in response.content.decode()
    [got] = receiver.received
    document = Webhook(endpoint.secret).verify(got.body, got.headers)
    assert document["type"] == "webhook.test"

    receiver.status = 503
    response = staff.post(
        CHANGELIST, {"action": "send_test_message", "_selected_action": [endpoint.pk]}, follow=True
    )
    assert "the test message failed: answered HTTP 503" in response.content.decode()
    # A test is not retried.
    assert not Delivery.objects.filter(status=Status.PENDING).exists()


def test_send_failed_messages_again_from_the_list(
    staff, owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    make_images_badge(threshold=1)
    receiver.stop()
    _post(owner, 1, django_capture_on_commit_callbacks)
    Delivery.objects.update(status=Status.FAILED, attempts=8)
    receiver.start()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            CHANGELIST,
            {"action": "send_failed_again", "_selected_action": [endpoint.pk]},
            follow=True,
        )
    assert "1 failed message(s) queued to be sent again" in response.content.decode()
    assert Delivery.objects.get().status == Status.DELIVERED
    assert len(receiver.received) == 1


def test_send_one_delivery_again(
    staff, owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(
            reverse("admin:webhooks_delivery_changelist"),
            {"action": "send_these_again", "_selected_action": [delivery.pk]},
        )
    # Sent twice, under one id: the receiver deduplicates.
    assert len(receiver.received) == 2 and len(set(receiver.ids())) == 1


def test_a_turned_off_endpoint_is_on_the_admin_front_page_until_enabled(
    staff, owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.status = 410
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    front = staff.get("/admin/").content.decode()
    assert "Webhook endpoints turned off" in front and "410 Gone" in front

    receiver.status = 204
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            CHANGELIST, {"action": "enable_again", "_selected_action": [endpoint.pk]}, follow=True
        )
    assert "1 endpoint(s) enabled" in response.content.decode()
    assert Delivery.objects.get().status == Status.DELIVERED
    assert "Webhook endpoints turned off" not in staff.get("/admin/").content.decode()


def test_rotating_the_secret_from_the_list(staff, endpoint):
    old = endpoint.secret
    staff.post(CHANGELIST, {"action": "rotate_secret", "_selected_action": [endpoint.pk]})
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret == old
    assert endpoint.previous_secret_until is not None
