from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from achievements.cards import cards_for_user
from achievements.models import LedgerEntry
from project.http import AuthenticatedHttpRequest

HISTORY_ON_PAGE = 10


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("achievements:badges")
    return render(request, "achievements/home.html")


@require_GET
@login_required
def badges(request: AuthenticatedHttpRequest) -> HttpResponse:
    cards = cards_for_user(request.user.pk)
    # A badge with a tier still to reach, or earned again every period, stays a goal.
    in_progress = [card for card in cards if not card["completed"] or card["ongoing"]]
    done = [card for card in cards if card["completed"] and not card["ongoing"]]
    return render(
        request,
        "achievements/badges.html",
        {
            "earned": done,
            "in_progress": in_progress,
            "earned_count": sum(1 for card in cards if card["completed"]),
            "total": len(cards),
            # What happened to the user's badges, newest first: one ledger, the
            # same the admin and the API read. Staff's reasons stay with staff.
            "history": LedgerEntry.objects.of_user(request.user.pk).select_related(
                "unlock__badge"
            )[:HISTORY_ON_PAGE],
        },
    )
