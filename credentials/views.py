"""Open Badges endpoints: the download, the published keys and documents, and the
verification page and API."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_ratelimit.decorators import ratelimit

from achievements.models import Badge, Unlock
from credentials import issuing
from credentials.models import SigningKey
from credentials.verification import MAX_LENGTH, verify
from project.http import AuthenticatedHttpRequest
from project.inputs import json_depth_problem

VERIFY_RATE = "30/m"


def _base(request: HttpRequest) -> str:
    """The site's address in credentials: ACCOLADE_SITE_URL when set, so one signed via
    one host name verifies via another; else the request's."""
    return settings.ACCOLADE_SITE_URL or request.build_absolute_uri("/").rstrip("/")


@require_GET
@login_required
def download(request: AuthenticatedHttpRequest, key: str) -> HttpResponse:
    """The user's credential for a badge they hold (its highest tier, its latest period)."""
    unlock = (
        Unlock.objects.held()
        .filter(user=request.user, badge__key=key, badge__is_active=True)
        .select_related("badge")
        .order_by("-tier", "-unlocked_at", "-pk")
        .first()
    )
    if unlock is None:
        raise Http404("You do not hold this badge, so there is no credential to download.")
    token = issuing.credential_for(unlock, _base(request))
    response = HttpResponse(token, content_type=issuing.MEDIA_TYPE)
    response["Content-Disposition"] = f'attachment; filename="{unlock.badge.key}.jwt"'
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@cache_control(public=True, max_age=300)
def jwks(request: HttpRequest) -> JsonResponse:
    """Every key verifiers may check this site's credentials with."""
    base = _base(request)
    keys = [key.jwk(issuing.key_url(base, key)) for key in SigningKey.objects.published()]
    if not keys:
        key = SigningKey.current()
        keys = [key.jwk(issuing.key_url(base, key))]
    return JsonResponse({"keys": keys})


@require_GET
@cache_control(public=True, max_age=300)
def key(request: HttpRequest, kid: str) -> JsonResponse:
    found = SigningKey.objects.published().filter(kid=kid).first()
    if found is None:
        raise Http404("No published key by that name.")
    return JsonResponse(found.jwk(issuing.key_url(_base(request), found)))


@require_GET
def issuer(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"@context": issuing.CONTEXTS, **issuing.issuer_profile(_base(request))})


@require_GET
def achievement(request: HttpRequest, key: str, tier: int = 0) -> JsonResponse:
    badge = (
        Badge.objects.active()
        .filter(key=key, hidden=False, segment_group__isnull=True, segment_attribute="")
        .first()
    )
    if badge is None or (tier and tier > len(badge.tier_list())):
        raise Http404("No such achievement.")
    return JsonResponse(
        {"@context": issuing.CONTEXTS, **issuing.achievement(badge, tier, _base(request))}
    )


class VerifyForm(forms.Form):
    credential = forms.CharField(
        label=_("Credential"),
        required=False,
        max_length=MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text=_("Paste the text of the downloaded .jwt file, or choose the file below."),
    )
    file = forms.FileField(label=_("Or the credential file"), required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        upload = data.get("file")
        if upload is not None:
            if upload.size > MAX_LENGTH:
                raise forms.ValidationError(
                    {"file": _("This file is too large to be a credential.")}
                )
            try:
                data["credential"] = upload.read().decode()
            except UnicodeDecodeError:
                raise forms.ValidationError(
                    {"file": _("This file is not a credential: it is not text.")}
                ) from None
        if not (data.get("credential") or "").strip():
            raise forms.ValidationError(
                {"credential": _("Paste a credential, or choose its file, to check it.")}
            )
        return data


@require_http_methods(["GET", "POST"])
@ratelimit(key="ip", rate=VERIFY_RATE, method="POST", block=False)
def verify_page(request: HttpRequest) -> HttpResponse:
    form = VerifyForm(request.POST or None, request.FILES or None)
    result = None
    status = 200
    if getattr(request, "limited", False):
        status = 429
        form = VerifyForm()
        form.add_error(None, _("Too many checks from this address in a minute; try again soon."))
    elif request.method == "POST":
        if form.is_valid():
            result = verify(form.cleaned_data["credential"], _base(request))
        else:
            status = 400
    credential = (result.credential or {}) if result else {}
    # The credential's dates, shown as the reader's locale writes dates.
    dates = {
        name: parse_datetime(value)
        for name, value in (
            ("valid_from", credential.get("validFrom")),
            ("valid_until", credential.get("validUntil")),
        )
        if isinstance(value, str)
    }
    return render(
        request,
        "credentials/verify.html",
        {"form": form, "result": result, "dates": dates},
        status=status,
    )


@csrf_exempt  # no session, no state: anyone may ask
@require_POST
@ratelimit(key="ip", rate=VERIFY_RATE, block=False)
def verify_api(request: HttpRequest) -> JsonResponse:
    """POST a credential (the JWT as the body, or JSON {"credential": "..."}): the outcome."""
    if getattr(request, "limited", False):
        return JsonResponse(
            {"error": "Too many checks from this address; retry in a minute."}, status=429
        )
    if len(request.body) > MAX_LENGTH:
        return JsonResponse({"error": "credential: too long to be a credential."}, status=400)
    body = request.body.decode("utf-8", errors="replace").strip()
    if request.content_type == "application/json":
        if problem := json_depth_problem(body):
            return JsonResponse({"error": f"The body {problem}."}, status=400)
        try:
            data = json.loads(body or "null")
        except ValueError:
            return JsonResponse({"error": "The body is not JSON."}, status=400)
        token = data.get("credential") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token.strip():
            return JsonResponse(
                {"error": "credential: give the credential (the JWT) as a string."}, status=400
            )
    else:
        token = body
        if not token:
            return JsonResponse(
                {"error": "credential: send the credential (the JWT) as the body."}, status=400
            )
    return JsonResponse(verify(token, _base(request)).as_json())
