"""The example producer's pages.

Each action saves the producer's own row and records the matching event in
the same transaction, with an event id derived from that row. That is the
whole integration: the request returns at once, evaluation happens elsewhere.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext
from django.views.decorators.http import require_http_methods

from achievements.cards import cards_for_user
from achievements.events import record_event
from examples.places.forms import PhotoForm, VisitForm
from examples.places.models import Photo, Visit
from project.http import AuthenticatedHttpRequest

VISIT_CREATED = "visit.created"
IMAGE_POSTED = "image.posted"


@require_http_methods(["GET", "POST"])
@login_required
def visits(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = VisitForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            with transaction.atomic():
                visit = form.save(commit=False)
                visit.user = request.user
                visit.save()
                record_event(
                    request.user,
                    VISIT_CREATED,
                    payload={"place_id": visit.place_id, "visit_id": visit.pk},
                    event_id=f"visit-{visit.pk}",
                    occurred_at=visit.visited_at,
                    source="places",
                )
            if not request.htmx:
                return redirect("places:visits")
            form = VisitForm(initial={"place": visit.place_id})
            form.saved_message = gettext("Visit to %(place)s logged.") % {"place": visit.place}  # type: ignore[attr-defined]
        else:
            status = 422
    context = {
        "form": form,
        "recent": Visit.objects.filter(user=request.user).select_related("place")[:10],
        "visit_count": Visit.objects.filter(user=request.user).count(),
    }
    if request.htmx:
        return render(request, "places/visits.html#panel", context, status=status)
    context["cards"] = cards_for_user(request.user.pk, event_types=[VISIT_CREATED])
    return render(request, "places/visits.html", context, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def photos(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = PhotoForm(request.POST, request.FILES) if request.method == "POST" else PhotoForm()
    status = 200
    if request.method == "POST":
        if form.is_valid():
            with transaction.atomic():
                photo = form.save(commit=False)
                photo.user = request.user
                photo.save()
                record_event(
                    request.user,
                    IMAGE_POSTED,
                    payload={"image_id": photo.pk},
                    event_id=f"photo-{photo.pk}",
                    occurred_at=photo.posted_at,
                    source="places",
                )
            if not request.htmx:
                return redirect("places:photos")
            form = PhotoForm()
            form.saved_message = gettext("Photo posted.")  # type: ignore[attr-defined]
        else:
            status = 422
    context = {
        "form": form,
        "recent": Photo.objects.filter(user=request.user)[:12],
        "photo_count": Photo.objects.filter(user=request.user).count(),
    }
    if request.htmx:
        return render(request, "places/photos.html#panel", context, status=status)
    context["cards"] = cards_for_user(request.user.pk, event_types=[IMAGE_POSTED])
    return render(request, "places/photos.html", context, status=status)
