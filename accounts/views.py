from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.forms import SignUpForm


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
