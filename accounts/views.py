from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from accounts.forms import SettingsForm, SignUpForm
from accounts.models import Profile
from accounts.unsubscribe import user_id_from_token
from achievements.models import Badge
from project.http import AuthenticatedHttpRequest


class LoginView(auth_views.LoginView):
    # Failed attempts are counted, and lock-outs answered, by django-axes
    # (its authentication backend and middleware; accounts.lockout).
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("achievements:badges")
    form = SignUpForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("achievements:badges")
    status = 400 if form.errors else 200
    return render(request, "accounts/signup.html", {"form": form}, status=status)


def _new_share_token() -> str:
    # 32 random bytes: a link nobody can guess or walk through.
    return secrets.token_urlsafe(32)


@require_http_methods(["GET", "POST"])
@login_required
def settings_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    profile, _ = Profile.objects.get_or_create(user=request.user)
    categories = list(
        Badge.objects.for_user(request.user.pk)
        .filter(hidden=False)  # a hidden badge's category would hint at it
        .exclude(category="")
        .order_by()
        .values_list("category", flat=True)
        .distinct()
    )
    form = SettingsForm(
        request.POST if request.method == "POST" else None,
        instance=profile,
        categories=categories,
        email_address=request.user.email,
    )
    status = 200
    saved = ""
    language_before = profile.language
    digest_before = profile.email_digest
    if request.method == "POST":
        if form.is_valid():
            with transaction.atomic():
                profile = form.save(commit=False)
                if profile.public_profile and not profile.share_token:
                    profile.share_token = _new_share_token()
                elif not profile.public_profile:
                    # Turned off, the link is gone for good: turning the page on again
                    # makes a new one, so a link that travelled too far stays dead.
                    profile.share_token = None
                # Only what the page sets: a digest run may be moving the digest's
                # own bookkeeping (last_digest_at) at this moment.
                fields = [*SettingsForm.Meta.fields, "share_token"]
                if profile.email_digest and not digest_before:
                    profile.start_digest(timezone.now())
                    fields += ["digest_since", "last_digest_at"]
                profile.save(update_fields=fields)
                if address := form.cleaned_data.get("email"):
                    # An update, not user.save(): a new address is no reason for the
                    # user's sockets to check their session again.
                    get_user_model().objects.filter(pk=request.user.pk).update(email=address)
                    request.user.email = address
            if not request.htmx:
                return redirect("accounts:settings")
            if profile.language != language_before:
                # The whole page changes language: have htmx load it again.
                response = HttpResponse(status=204)
                response["HX-Refresh"] = "true"
                return response
            saved = gettext("Settings saved.")
            form = SettingsForm(
                instance=profile, categories=categories, email_address=request.user.email
            )
        else:
            status = 422
    context = {
        "form": form,
        "profile": profile,
        "saved": saved,
        "share_url": _share_url(request, profile),
    }
    template = "accounts/settings.html#panel" if request.htmx else "accounts/settings.html"
    return render(request, template, context, status=status)


@require_POST
@login_required
def new_share_link(request: AuthenticatedHttpRequest) -> HttpResponse:
    """A new address for the public page: the old link stops working at once."""
    Profile.objects.filter(user=request.user).update(share_token=_new_share_token())
    return redirect(reverse("accounts:settings") + "#public-page")


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """Stop the daily email from the link in it, without logging in.

    GET only asks: mail scanners open the links in an email, and must not
    unsubscribe anyone. POST turns the email off: the page's button, or a mail
    program's one-click unsubscribe (RFC 8058, a POST of
    "List-Unsubscribe=One-Click" to the List-Unsubscribe address). The signed
    token is the authority, so there is no CSRF token to ask for; a mail
    program would have none. A token that is not one we signed changes
    nothing and says so.
    """
    user_id = user_id_from_token(token)
    if user_id is None:
        return render(request, "accounts/unsubscribe.html", {"state": "invalid"}, status=400)
    subscribed = Profile.objects.filter(user_id=user_id, email_digest=True)
    if request.method == "POST":
        subscribed.update(email_digest=False)
        state = "stopped"
    else:
        state = "confirm" if subscribed.exists() else "already_off"
    return render(request, "accounts/unsubscribe.html", {"state": state, "token": token})


def _share_url(request: HttpRequest, profile: Profile) -> str:
    if not (profile.public_profile and profile.share_token):
        return ""
    return request.build_absolute_uri(reverse("achievements:public", args=[profile.share_token]))
