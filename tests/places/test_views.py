"""The example producer: its own row and the event, in one transaction."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from achievements.models import Event, UserBadge
from examples.places.models import Photo, Visit
from tests.factories import make_images_badge, make_places, make_places_badge

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def places(db):
    return make_places(names=["Lisbon", "Kyoto", "Hobart"])


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def _png(size=(4, 4)) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    Image.new("RGB", size, "purple").save(buffer, format="PNG")
    return SimpleUploadedFile("tiny.png", buffer.getvalue(), content_type="image/png")


def test_logging_a_visit_records_the_visit_and_its_event(
    client, owner, places, django_capture_on_commit_callbacks
):
    make_places_badge(threshold=5)
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/places/", {"place": places[1].pk}, **HTMX)
    assert response.status_code == 200
    visit = Visit.objects.get(user=owner)
    event = Event.objects.get()
    assert (event.event_id, event.event_type, event.payload) == (
        f"visit-{visit.pk}",
        "visit.created",
        {"place_id": places[1].pk, "visit_id": visit.pk},
    )
    assert event.occurred_at == visit.visited_at
    assert UserBadge.objects.get(user=owner).current_value == 1
    assert "Visit to Kyoto logged." in response.content.decode()
    assert 'id="visit-panel"' in response.content.decode()
    assert "<html" not in response.content.decode()


def test_a_plain_form_post_redirects_back(client, owner, places):
    client.force_login(owner)
    response = client.post("/places/", {"place": places[0].pk})
    assert response.status_code == 302 and response["Location"] == "/places/"


@pytest.mark.parametrize("data", [{}, {"place": ""}, {"place": "999999"}, {"place": "abc"}])
def test_a_bad_place_is_refused_with_the_field_named_and_nothing_written(
    client, owner, places, data
):
    client.force_login(owner)
    response = client.post("/places/", data, **HTMX)
    assert response.status_code == 422
    assert 'class="field has-error"' in response.content.decode()
    assert not Visit.objects.exists() and not Event.objects.exists()


def test_the_visits_page_shows_progress_for_badges_that_watch_visits(client, owner, places):
    make_places_badge(threshold=5)
    make_images_badge(threshold=10)
    client.force_login(owner)
    page = client.get("/places/").content.decode()
    assert 'id="badge-places_visited_5"' in page
    assert 'id="badge-images_posted_10"' not in page


def test_posting_a_photo_records_an_image_posted_event(
    client, owner, django_capture_on_commit_callbacks
):
    make_images_badge(threshold=1)
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/places/photos/", {"caption": "Harbour", "image": _png()}, **HTMX)
    assert response.status_code == 200
    photo = Photo.objects.get()
    event = Event.objects.get()
    assert (event.event_id, event.event_type, event.payload) == (
        f"photo-{photo.pk}",
        "image.posted",
        {"image_id": photo.pk},
    )
    assert UserBadge.objects.get(user=owner).completed_at is not None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"caption": "No file"}, "image"),
        (
            {
                "caption": "Not an image",
                "image": SimpleUploadedFile("x.png", b"hello", "image/png"),
            },
            "image",
        ),
        ({"caption": "", "image": "PNG"}, "caption"),
    ],
)
def test_a_bad_photo_is_refused_and_nothing_written(client, owner, data, field):
    if data.get("image") == "PNG":
        data = {**data, "image": _png()}
    client.force_login(owner)
    response = client.post("/places/photos/", data, **HTMX)
    assert response.status_code == 422
    assert f'id="id_{field}_error"' in response.content.decode()
    assert not Photo.objects.exists() and not Event.objects.exists()


def test_an_oversized_photo_is_refused(client, owner, monkeypatch):
    from examples.places import forms

    monkeypatch.setattr(forms, "MAX_IMAGE_BYTES", 10)
    client.force_login(owner)
    response = client.post("/places/photos/", {"caption": "Big", "image": _png((64, 64))}, **HTMX)
    assert response.status_code == 422
    assert "larger than 2 MB" in response.content.decode()
    assert not Event.objects.exists()


def test_producer_pages_need_a_signed_in_user(client, db):
    assert client.get("/places/").status_code == 302
    assert client.post("/places/photos/").status_code == 302
    assert not Event.objects.exists()
