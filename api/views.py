"""The event ingestion API: JSON in, JSON out, never a 500 for bad input.

Every error names the field and the problem, as {"errors": [{"field", "problem"}]}.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from achievements import awards, index
from achievements.cards import cards_for_user
from achievements.events import (
    ExternalEvent,
    InvalidEvent,
    record_external_events,
)
from achievements.models import Badge, Entry, Event, ExternalIdentity, LedgerEntry, Unlock
from api.auth import authenticate, rate_limit, refused
from api.documents import event_from, json_type, parse_json
from api.models import ApiKey
from api.schema import ID_MAX_LENGTH, openapi_schema
from project.inputs import text_problem


def error(status: int, field: str, problem: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"errors": [{"field": field, "problem": problem}]}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _path_problem(name: str, value: str) -> JsonResponse | None:
    """A 400 for an id in the path no event or user can have and the database
    cannot look up (PostgreSQL refuses text with a NUL character)."""
    problem = text_problem(value, max_length=ID_MAX_LENGTH)
    return error(400, name, problem) if problem else None


def _guard(request: HttpRequest, scope: str) -> ApiKey | JsonResponse:
    """Authenticate, check the key has `scope`, and rate-limit: the key, or a response
    to send instead."""
    api_key = authenticate(request)
    if api_key is None:
        # Only a key that was sent counts: without one there is nothing to guess.
        wait = refused(request) if "Authorization" in request.headers else None
        if wait is not None:
            return error(
                429,
                "Authorization",
                "too many requests with an invalid or revoked API key from this address; "
                f"retry after {wait} s",
                Retry_After=str(wait),
            )
        return error(
            401,
            "Authorization",
            "send a valid, unrevoked API key as 'Authorization: Bearer KEY'",
            WWW_Authenticate='Bearer realm="accolade"',
        )
    if not api_key.allows(scope):
        return error(
            403,
            "Authorization",
            f"this key may not do this: it lacks the scope {scope!r} "
            f"(it has {', '.join(api_key.scopes) or 'none'})",
        )
    retry_after = rate_limit(api_key)
    if retry_after is not None:
        return error(
            429,
            "Authorization",
            f"this key has used its {settings.ACCOLADE_API_RATE_LIMIT[0]} requests per "
            f"{settings.ACCOLADE_API_RATE_LIMIT[1]} s; retry after {retry_after} s",
            Retry_After=str(retry_after),
        )
    return api_key


@require_GET
def schema(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_schema())


@csrf_exempt
@require_POST
@index.pinned()  # the types accepted and the dedup rules: one look at the rules' version
def events(request: HttpRequest) -> JsonResponse:
    """Record one event or a batch; 202 with a result per event once they are durable."""
    guarded = _guard(request, "events:write")
    if isinstance(guarded, JsonResponse):
        return guarded
    api_key = guarded
    document = _json_body(request)
    if isinstance(document, JsonResponse):
        return document

    if isinstance(document, dict) and "events" in document:
        extra = sorted(set(document) - {"events"})
        if extra:
            return error(422, extra[0], "is not allowed next to 'events'")
        items = document["events"]
        if not isinstance(items, list):
            return error(422, "events", f"must be an array, not {json_type(items)}")
        if not items:
            return error(422, "events", "must hold at least one event")
        limit = settings.ACCOLADE_API_MAX_BATCH
        if len(items) > limit:
            return error(422, "events", f"must hold at most {limit} events (got {len(items)})")
        prefix = "events[{}]."
    else:
        items = [document]
        prefix = ""

    known_types = index.accepted_event_types()
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, ExternalEvent]] = []
    for position, item in enumerate(items):
        event_id = item.get("event_id") if isinstance(item, dict) else None
        shown_id = event_id if isinstance(event_id, str) and len(event_id) <= 128 else None
        results.append({"event_id": shown_id})
        event = event_from(item, prefix.format(position), known_types, source="api")
        if isinstance(event, list):
            results[-1].update(status="rejected", errors=event)
            continue
        valid.append((position, event))
    if valid:
        recorded = record_external_events([event for _, event in valid], producer=api_key.producer)
        for (position, _), outcome in zip(valid, recorded, strict=True):
            if isinstance(outcome, InvalidEvent):
                results[position].update(
                    status="rejected",
                    errors=[
                        {
                            "field": prefix.format(position) + outcome.field,
                            "problem": outcome.problem,
                        }
                    ],
                )
            else:
                results[position]["status"] = "accepted" if outcome.created else "duplicate"
    stored = any(result["status"] != "rejected" for result in results)
    return JsonResponse({"results": results}, status=202 if stored else 422)


def _json_body(request: HttpRequest) -> Any:
    """The request's JSON document, or the 4xx that says what is wrong with the body."""
    max_body = settings.ACCOLADE_API_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > max_body:
        return error(413, "body", f"must be at most {max_body} bytes (got {declared})")
    content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return error(415, "Content-Type", "must be application/json")
    try:
        body = request.body
    except RequestDataTooBig:
        return error(413, "body", f"must be at most {max_body} bytes")
    if len(body) > max_body:
        return error(413, "body", f"must be at most {max_body} bytes (got {len(body)})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error(400, "body", f"is not valid UTF-8 (byte {exc.start})")
    document, problem = parse_json(text)
    if problem:
        return error(400, "body", problem)
    return document


@require_GET
def event_status(request: HttpRequest, event_id: str) -> JsonResponse:
    guarded = _guard(request, "events:read")
    if isinstance(guarded, JsonResponse):
        return guarded
    api_key = guarded
    bad_id = _path_problem("event_id", event_id)
    if bad_id:
        return bad_id
    # Only this key's producer's events: another's are as unknown as a made-up id.
    event = Event.objects.filter(producer=api_key.producer, event_id=event_id).first()
    if event is None:
        return error(404, "event_id", f"producer {api_key.producer!r} has no event with this id")
    if event.processed_at:
        status = "processed"
    elif event.dead_lettered_at:
        status = "dead_lettered"
    elif event.user_id is None:
        status = "waiting_for_user"
    elif event.retrying:
        status = "retrying"
    else:
        status = "pending"
    unlocks = Unlock.objects.filter(event=event).select_related("badge").order_by("pk")
    return JsonResponse(
        {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "user_id": event.external_user_id or _external_id_of(event.user_id),
            "status": status,
            "received_at": event.received_at.isoformat(),
            "processed_at": event.processed_at.isoformat() if event.processed_at else None,
            "attempts": event.attempts,
            "next_attempt_at": (
                event.retry_at.isoformat() if event.retrying and event.retry_at else None
            ),
            "dead_letter_reason": _last_line(event.last_error) if event.dead_lettered_at else None,
            "unlocks": [
                {
                    "badge": unlock.badge.key,
                    "name": unlock.badge.name,
                    "unlocked_at": unlock.unlocked_at.isoformat(),
                    # Held, or how it ended since (the history has why).
                    "ended": unlock.ending or None,
                    "ended_at": unlock.ended_at.isoformat() if unlock.ended_at else None,
                }
                for unlock in unlocks
            ],
        }
    )


def _identity(
    request: HttpRequest, user_id: str, scope: str
) -> tuple[ApiKey, ExternalIdentity] | JsonResponse:
    """The key and the producer's user id in the path, or the response to send instead
    (the key's refusal, a bad id, or a 404 for an id nobody has sent or linked)."""
    guarded = _guard(request, scope)
    if isinstance(guarded, JsonResponse):
        return guarded
    bad_id = _path_problem("user_id", user_id)
    if bad_id:
        return bad_id
    identity = ExternalIdentity.objects.filter(external_id=user_id).first()
    if identity is None:
        return error(404, "user_id", "no events or link exist for this user id")
    return guarded, identity


@require_GET
def user_badges(request: HttpRequest, user_id: str) -> JsonResponse:
    found = _identity(request, user_id, "badges:read")
    if isinstance(found, JsonResponse):
        return found
    _, identity = found
    cards = cards_for_user(identity.user_id)
    waiting = Event.objects.unprocessed().filter(external_user_id=user_id).count()
    return JsonResponse(
        {
            "user_id": identity.external_id,
            "linked": identity.user_id is not None,
            "pending_events": waiting,
            "badges": [
                {
                    "key": card["key"],
                    "name": card["name"],
                    "description": card["description"],
                    "icon": card["icon"],
                    "earned": card["completed"],
                    "earned_at": card["completed_at"],
                    "times_earned": card["times_earned"],
                    "tier": card["tier"],
                    "next_tier": card["next_tier"],
                    "percent": card["percent"],
                    "current": card["current"],
                    "target": card["target"],
                    "requirements": card["requirements"],
                    "granted": card["granted"],
                    "revoked": card["revoked"],
                    "expires_at": card["expires_at"],
                    "expired": card["expired"],
                    "holds_while_met": card["holds_while"],
                    "lost": card["lost"],
                }
                for card in cards
            ],
        }
    )


AWARD_FIELDS = {"reason", "tier", "period"}


@csrf_exempt
@require_http_methods(["POST", "DELETE"])
def user_badge(request: HttpRequest, user_id: str, badge_key: str) -> JsonResponse:
    """Grant (POST) or revoke (DELETE) a badge of a user, with a reason; the ledger's
    new entries. Staff's rules for it are achievements.awards'."""
    found = _identity(request, user_id, "badges:write")
    if isinstance(found, JsonResponse):
        return found
    api_key, identity = found
    bad_key = _path_problem("badge_key", badge_key)
    if bad_key:
        return bad_key
    document = _json_body(request)
    if isinstance(document, JsonResponse):
        return document
    if not isinstance(document, dict):
        return error(422, "body", f"must be an object, not {json_type(document)}")
    extra = sorted(set(document) - AWARD_FIELDS)
    if extra:
        return error(422, extra[0], f"is not a field here; send {', '.join(sorted(AWARD_FIELDS))}")
    reason, tier, period = document.get("reason"), document.get("tier"), document.get("period")
    if not isinstance(reason, str):
        return error(422, "reason", "is required: a string saying why, kept in the history")
    if tier is not None and (type(tier) is not int or not 1 <= tier <= 1000):
        return error(422, "tier", "must be a whole number from 1 (the first tier)")
    if period is not None and not isinstance(period, str):
        return error(422, "period", "must be a string such as 2026-W49")
    if period is not None and (problem := text_problem(period, max_length=32)) is not None:
        return error(422, "period", problem)
    if identity.user_id is None:
        return error(409, "user_id", "is not linked to a site user yet")
    badge = Badge.objects.filter(key=badge_key).first()
    if badge is None:
        return error(404, "badge_key", "no badge has this key")
    act = awards.grant_badge if request.method == "POST" else awards.revoke_badge
    try:
        unlocks = act(
            user_id=identity.user_id,
            badge=badge,
            reason=reason,
            by=awards.Actor(api_key_id=api_key.pk),
            tier=tier,
            period=period,
        )
    except awards.AwardRefused as refused:
        name = {"badge": "badge_key", "user": "user_id"}.get(refused.field, refused.field)
        return error(409 if refused.conflict else 422, name, refused.message)
    entries = (
        LedgerEntry.objects.filter(
            unlock__in=unlocks, kind=Entry.GRANTED if request.method == "POST" else Entry.REVOKED
        )
        .select_related("badge")
        .order_by("-at", "-pk")
    )
    return JsonResponse(
        {"user_id": identity.external_id, "badge": badge.key, "entries": _entries(entries)},
        status=201 if request.method == "POST" else 200,
    )


@require_GET
def user_history(request: HttpRequest, user_id: str) -> JsonResponse:
    """The ledger of a user's badges, newest first: earnings, grants, revocations, expiries."""
    found = _identity(request, user_id, "badges:read")
    if isinstance(found, JsonResponse):
        return found
    _, identity = found
    entries = (
        LedgerEntry.objects.of_user(identity.user_id)[:HISTORY_LIMIT]
        if identity.user_id is not None
        else []
    )
    return JsonResponse({"user_id": identity.external_id, "entries": _entries(entries)})


HISTORY_LIMIT = 500


def _entries(entries: Any) -> list[dict[str, Any]]:
    return [
        {
            "kind": entry.kind,
            "badge": entry.badge.key,
            "tier": entry.tier,
            "period": entry.period,
            "at": entry.at.isoformat(),
            "by": entry.cause,
            "reason": entry.reason,
            "event_ids": entry.event_ids,
        }
        for entry in entries
    ]


def _external_id_of(user_id: int | None) -> str | None:
    if user_id is None:
        return None
    return (
        ExternalIdentity.objects.filter(user_id=user_id)
        .values_list("external_id", flat=True)
        .first()
    )


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
