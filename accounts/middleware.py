"""A signed-in user's own settings, applied to each of their requests."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import translation

from accounts.models import Profile


class UserLanguageMiddleware:
    """After LocaleMiddleware (the browser's Accept-Language): the language the user
    chose in their settings, if any, and whether they want animation. One query."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        request.accolade_animate = True  # type: ignore[attr-defined]
        if user is not None and user.is_authenticated:
            profile = (
                Profile.objects.filter(user_id=user.pk)
                .values_list("language", "browser_language", "animate")
                .first()
            )
            # Users made outside the sign-up form (createsuperuser) may have none: their
            # pages follow the browser, their pushes the site's default language.
            if profile is not None:
                language, seen, request.accolade_animate = profile  # type: ignore[attr-defined]
                if language:
                    translation.activate(language)
                    request.LANGUAGE_CODE = language
                elif seen != (browser := translation.get_language() or ""):
                    # Pushed notifications follow the browser, as the pages do.
                    Profile.objects.filter(user_id=user.pk).update(browser_language=browser)
        response = self.get_response(request)
        return response
