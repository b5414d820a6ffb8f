from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET
from django_ratelimit.decorators import ratelimit

from accounts.models import Profile
from achievements.cards import Card, cards_for_user
from achievements.models import Badge, LedgerEntry, translation_of
from achievements.share_images import badge_image
from project.http import AuthenticatedHttpRequest

HISTORY_ON_PAGE = 10
# Badges the signed-out home page shows as a sample of what there is to earn.
SAMPLE_ON_HOME = 6

SHOW_CHOICES = [
    ("all", _("All badges")),
    ("earned", _("Earned")),
    ("in_progress", _("In progress")),
]
SORT_CHOICES = [
    ("suggested", _("Suggested order")),
    ("closest", _("Closest to unlock")),
    ("recent", _("Recently earned")),
    ("rarest", _("Rarest first")),
]


class BadgeListForm(forms.Form):
    """Which of the user's badges the page lists, and in what order (the query string)."""

    show = forms.ChoiceField(label=_("Show"), choices=SHOW_CHOICES, required=False)
    sort = forms.ChoiceField(label=_("Sort by"), choices=SORT_CHOICES, required=False)

    def choice(self, name: str) -> str:
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        return data.get(name) or self.fields[name].choices[0][0]  # type: ignore[attr-defined]


# Each order as a key on a card and whether it runs from the largest; Python's sort is
# stable (reversed too), so ties keep the suggested order.
ORDERS: dict[str, tuple[Callable[[Card], Any], bool]] = {
    "suggested": (lambda card: 0, False),
    "closest": (lambda card: card["percent"], True),
    # The latest earning held (a tier or a period earned today), as ISO moments; none: last.
    "recent": (lambda card: card["last_earned_at"] or "" if card["completed"] else "", True),
    "rarest": (lambda card: card["rarity"], False),
}


def _worded(entries: Any) -> list[LedgerEntry]:
    """The history's entries, each with the badge's name and earning in the reader's
    language (`shown_name`, `shown_suffix`)."""
    language = translation.get_language()
    worded = []
    for entry in entries:
        words = translation_of(entry.badge, language)
        entry.shown_name = (words.name if words else "") or entry.badge.name
        names = list(words.tier_names or []) if words else []
        tier = entry.unlock.tier
        entry.shown_suffix = (
            f" ({names[tier - 1]})" if tier and 0 < tier <= len(names) else entry.unlock.suffix()
        )
        worded.append(entry)
    return worded


def _listed(count: int, show: str, sort: str) -> str:
    order = str(dict(SORT_CHOICES)[sort]).lower()
    if show == "all":
        return ngettext("%(count)d badge, %(order)s.", "%(count)d badges, %(order)s.", count) % {
            "count": count,
            "order": order,
        }
    which = str(dict(SHOW_CHOICES)[show]).lower()
    return ngettext(
        "%(count)d badge, %(which)s only, %(order)s.",
        "%(count)d badges, %(which)s only, %(order)s.",
        count,
    ) % {"count": count, "which": which, "order": order}


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("achievements:badges")
    # What there is to earn, as everyone sees it (no hidden or segmented badges).
    sample = [card for card in cards_for_user(None) if not card["hidden"]][:SAMPLE_ON_HOME]
    return render(request, "achievements/home.html", {"sample": sample})


@require_GET
@login_required
def badges(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = BadgeListForm(request.GET or None)
    status = 200
    if form.is_bound and not form.is_valid():
        status = 400  # the page still shows, in the suggested order, with what was wrong
    show, sort = form.choice("show"), form.choice("sort")
    key, largest_first = ORDERS[sort]
    cards = sorted(cards_for_user(request.user.pk), key=key, reverse=largest_first)
    if show == "earned":
        # Everything held, the badges with a tier still to reach included.
        in_progress, done = [], [card for card in cards if card["completed"]]
    else:
        # A badge with a tier still to reach, or earned again every period, stays a goal.
        in_progress = [card for card in cards if not card["completed"] or card["ongoing"]]
        done = [card for card in cards if card["completed"] and not card["ongoing"]]
        if show == "in_progress":
            done = []
    context = {
        "form": form,
        "show": show,
        "sort": sort,
        "earned": done,
        "in_progress": in_progress,
        # Said to screen readers when the list changes under the controls (not when
        # the page fetches it again by itself, after a push: ?relist=1).
        "listed": ""
        if "relist" in request.GET
        else _listed(len(in_progress) + len(done), show, sort),
        "earned_count": sum(1 for card in cards if card["completed"]),
        "total": len(cards),
    }
    if request.htmx:
        # Invalid choices from htmx: 422, which the page swaps in, errors and all.
        return render(
            request,
            "achievements/badges.html#lists",
            context,
            status=422 if status == 400 else 200,
        )
    # What happened to the user's badges, newest first: one ledger, the same the
    # admin and the API read. Staff's reasons stay with staff.
    context["history"] = _worded(
        LedgerEntry.objects.of_user(request.user.pk)
        .select_related("unlock__badge")
        .prefetch_related("badge__translations")[:HISTORY_ON_PAGE]
    )
    return render(request, "achievements/badges.html", context, status=status)


# Per address: plenty for people opening shared links, too few to try addresses.
PUBLIC_PAGE_RATE = "60/m"


@require_GET
@ratelimit(key="ip", rate=PUBLIC_PAGE_RATE, block=False)
def public(request: HttpRequest, token: str) -> HttpResponse:
    """A user's public badge page, if they opted in: what they have earned, nothing else.

    The address is a random token from their settings rather than their
    username, so nobody can walk through members or learn a log-in name,
    and a new token retires a link that travelled too far.
    """
    if getattr(request, "limited", False):
        response = render(request, "achievements/public_limited.html", status=429)
        response["Retry-After"] = "60"
        return response
    profile = (
        Profile.objects.filter(share_token=token, public_profile=True, user__is_active=True)
        .only("user_id", "public_name")
        .first()
    )
    if profile is None:
        # The same answer for a link that never existed, one retired and one turned off.
        raise Http404("No public badge page at this address.")
    # Hidden badges stay hidden; a segmented one would tell its holder's group or plan.
    hidden = set(
        Badge.objects.filter(
            Q(hidden=True) | Q(segment_group__isnull=False) | ~Q(segment_attribute="")
        ).values_list("pk", flat=True)
    )
    earned = [
        card
        for card in cards_for_user(profile.user_id)
        if card["completed"] and card["id"] not in hidden
    ]
    name = profile.public_name or gettext("An Accolade member")
    # ?badge=KEY: the link to share one badge, whose preview shows that badge.
    featured = earned[0] if earned else None
    if wanted := request.GET.get("badge"):
        featured = next((card for card in earned if card["key"] == wanted), None)
        if featured is None:
            return render(
                request,
                "achievements/public.html",
                {"name": name, "earned": earned, "token": token, "problem": wanted},
                status=400,
            )
    image = (
        request.build_absolute_uri(reverse("achievements:badge_image", args=[featured["key"]]))
        if featured
        else ""
    )
    return render(
        request,
        "achievements/public.html",
        {
            "name": name,
            "earned": earned,
            "token": token,
            "featured": featured if wanted else None,
            "image": image,
        },
    )


@require_GET
@cache_control(public=True, max_age=3600)
def badge_preview_image(request: HttpRequest, key: str) -> HttpResponse:
    """A badge's link-preview picture, for a badge anyone may see."""
    badge = (
        Badge.objects.active()
        .filter(key=key, hidden=False, segment_group__isnull=True, segment_attribute="")
        .first()
    )
    if badge is None:
        raise Http404("No such badge.")
    png = badge_image(
        badge.name,
        badge.description,
        [name for name, _ in badge.tier_list()],
        version=badge.updated_at.isoformat(),
    )
    return HttpResponse(png, content_type="image/png")
