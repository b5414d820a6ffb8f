"""The OpenAPI 3.1 description of the API, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from project.inputs import MAX_JSON_DEPTH

ID_MAX_LENGTH = 128
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
SOURCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"
TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"


def _error_response(description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
        **extra,
    }


BAD_ID = f"The id holds a NUL character or is longer than {ID_MAX_LENGTH} characters."
ERRORS = {
    "401": _error_response("Missing, unknown or revoked API key."),
    "403": _error_response("The key lacks the scope this operation needs."),
    "429": _error_response(
        "This key's rate limit is used up, or this address has sent too many requests "
        "with a bad key.",
        headers={
            "Retry-After": {
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "description": "Seconds to wait.",
            }
        },
    ),
}


def openapi_schema() -> dict[str, Any]:
    limit, period = settings.ACCOLADE_API_RATE_LIMIT
    event = {
        "type": "object",
        "additionalProperties": False,
        "required": ["event_id", "event_type", "user_id", "occurred_at"],
        "properties": {
            "event_id": {
                "type": "string",
                "pattern": ID_PATTERN,
                "maxLength": 128,
                "description": "Your stable id for the event, unique among your producer's "
                "(your key's) events; a repeat is a duplicate.",
            },
            "event_type": {
                "type": "string",
                "pattern": TYPE_PATTERN,
                "maxLength": 64,
                "description": "A known event type, e.g. visit.created.",
            },
            "user_id": {
                "type": "string",
                "pattern": ID_PATTERN,
                "maxLength": 128,
                "description": "Your id for the user. Events for an id not yet "
                "linked to a site user are kept until it is.",
            },
            "occurred_at": {
                "type": "string",
                "format": "date-time",
                "description": "ISO 8601 with a time zone; not in the future.",
            },
            "source": {
                "type": "string",
                "pattern": SOURCE_PATTERN,
                "maxLength": 64,
                "default": "api",
            },
            "payload": {
                "type": "object",
                "description": "At most 16 KB as JSON and 10 levels deep.",
            },
        },
        "example": {
            "event_id": "visit-9001",
            "event_type": "visit.created",
            "user_id": "u-42",
            "occurred_at": "2026-11-21T09:30:00Z",
            "source": "mobile",
            "payload": {"place_id": 7},
        },
    }
    award_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Award"}}},
    }

    def award_result(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/AwardResult"}}
            },
        }

    def award_errors(conflict: str) -> dict[str, Any]:
        return {
            "400": _error_response(
                f"An id holds a NUL character or is too long, or the body is not UTF-8 "
                f"JSON, or nests more than {MAX_JSON_DEPTH} levels deep."
            ),
            "404": _error_response("No such user id (no events, no link) or badge key."),
            "409": _error_response(conflict + " Or the user id is not linked to a site user."),
            "413": _error_response("The body is too large."),
            "415": _error_response("The body is not application/json."),
            "422": _error_response(
                "A field is missing or wrong: no reason, an unknown field, a tier the badge "
                "does not have, a period for a badge earned once, an inactive badge, a user "
                "outside the badge's segment."
            ),
            **ERRORS,
        }

    entry = {
        "type": "object",
        "required": ["kind", "badge", "tier", "period", "at", "by", "reason", "event_ids"],
        "properties": {
            "kind": {
                "enum": ["earned", "granted", "revoked", "expired", "lapsed"],
                "description": "lapsed: lost because its rule stopped holding (badges "
                "that hold only while it holds).",
            },
            "badge": {"type": "string", "description": "The badge's key."},
            "tier": {"type": "integer", "minimum": 0, "description": "0: an untiered badge."},
            "period": {"type": "string", "description": "Repeatable badges: the period."},
            "at": {"type": "string", "format": "date-time"},
            "by": {
                "enum": ["rule", "staff", "api", "schedule"],
                "description": "What made it: the badge's rule, staff in the admin, an API "
                "key, or the expiry schedule.",
            },
            "reason": {"type": "string", "description": "Grants and revocations: why."},
            "event_ids": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Earnings: the ids of the events that completed it.",
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Accolade event API",
            "version": "1.0.0",
            "description": (
                "Send events from other services and read badge progress. Authenticate with "
                "`Authorization: Bearer KEY` (keys from the admin or `manage.py "
                f"create_api_key NAME`). Each key may make {limit} requests per {period} s. "
                "A key speaks for one producer: event ids are unique per producer, and a key "
                "reads only its producer's events. Its scopes say what it may do: "
                "events:write (POST /api/v1/events), events:read (GET /api/v1/events/{id}), "
                "badges:read (GET /api/v1/users/{id}/badges), metrics:read (/metrics)."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/events": {
                "post": {
                    "operationId": "recordEvents",
                    "summary": "Record one event, or a batch of them",
                    "description": (
                        f'A single event object, or {{"events": [...]}} with 1 to '
                        f"{settings.ACCOLADE_API_MAX_BATCH} of them. Body at most "
                        f"{settings.ACCOLADE_API_MAX_BODY_BYTES} bytes. Events are durable "
                        "when the response is sent; evaluation follows asynchronously."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Event"},
                                        {"$ref": "#/components/schemas/Batch"},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "At least one event was stored (or was a "
                            "duplicate); see each result.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Results"}
                                }
                            },
                        },
                        "422": {
                            "description": "No event could be stored: each result says "
                            "why, or the batch is malformed or holds too many events.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Results"},
                                            {"$ref": "#/components/schemas/Errors"},
                                        ]
                                    }
                                }
                            },
                        },
                        "400": _error_response(
                            f"The body is not UTF-8 JSON, or nests more than {MAX_JSON_DEPTH} "
                            "levels deep."
                        ),
                        "413": _error_response("The body is too large."),
                        "415": _error_response("The body is not application/json."),
                        **ERRORS,
                    },
                }
            },
            "/api/v1/events/{event_id}": {
                "get": {
                    "operationId": "getEvent",
                    "summary": "An event's processing status and the unlocks it caused",
                    "parameters": [
                        {
                            "name": "event_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "maxLength": ID_MAX_LENGTH},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The event.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/EventStatus"}
                                }
                            },
                        },
                        "400": _error_response(BAD_ID),
                        "404": _error_response("Your producer has no event with this id."),
                        **ERRORS,
                    },
                }
            },
            "/api/v1/users/{user_id}/badges": {
                "get": {
                    "operationId": "getUserBadges",
                    "summary": "A user's earned badges and progress (as on their badge page)",
                    "parameters": [
                        {
                            "name": "user_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "maxLength": ID_MAX_LENGTH},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The user's badges.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/UserBadges"}
                                }
                            },
                        },
                        "400": _error_response(BAD_ID),
                        "404": _error_response("No event or link exists for this user id."),
                        **ERRORS,
                    },
                }
            },
            "/api/v1/users/{user_id}/badges/{badge_key}": {
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "maxLength": ID_MAX_LENGTH},
                    },
                    {
                        "name": "badge_key",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "maxLength": ID_MAX_LENGTH},
                    },
                ],
                "post": {
                    "operationId": "grantBadge",
                    "summary": "Grant a user a badge, with a reason (needs badges:write)",
                    "description": "A tiered badge takes the tier (the next one by default; "
                    "every tier up to it is granted); a repeatable one the period (the user's "
                    "current one by default). A grant lifts a revocation's hold.",
                    "requestBody": award_body,
                    "responses": {
                        "201": award_result("The grant, as entries of the user's history."),
                        **award_errors("The user already holds it."),
                    },
                },
                "delete": {
                    "operationId": "revokeBadge",
                    "summary": "Revoke a user's badge, with a reason (needs badges:write)",
                    "description": "All its earnings by default; `tier` revokes that tier and "
                    "those above, `period` one period's earning of a repeatable badge. The "
                    "rule does not award a revoked earning again until it is granted.",
                    "requestBody": award_body,
                    "responses": {
                        "200": award_result("The revocation, as entries of the user's history."),
                        **award_errors("The user does not hold it."),
                    },
                },
            },
            "/api/v1/users/{user_id}/history": {
                "get": {
                    "operationId": "getUserHistory",
                    "summary": "A user's badge history, newest first: earnings, grants, "
                    "revocations and expiries",
                    "parameters": [
                        {
                            "name": "user_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "maxLength": ID_MAX_LENGTH},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The history.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/History"}
                                }
                            },
                        },
                        "400": _error_response(BAD_ID),
                        "404": _error_response("No event or link exists for this user id."),
                        **ERRORS,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Event": event,
                "Batch": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["events"],
                    "properties": {
                        "events": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": settings.ACCOLADE_API_MAX_BATCH,
                            "items": {"$ref": "#/components/schemas/Event"},
                        }
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["field", "problem"],
                    "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
                },
                "Errors": {
                    "type": "object",
                    "required": ["errors"],
                    "properties": {
                        "errors": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"$ref": "#/components/schemas/Error"},
                        }
                    },
                },
                "Result": {
                    "type": "object",
                    "required": ["event_id", "status"],
                    "properties": {
                        "event_id": {"type": ["string", "null"]},
                        "status": {"enum": ["accepted", "duplicate", "rejected"]},
                        "errors": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Error"},
                        },
                    },
                },
                "Results": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Result"},
                        }
                    },
                },
                "EventStatus": {
                    "type": "object",
                    "required": ["event_id", "event_type", "status", "received_at", "unlocks"],
                    "properties": {
                        "event_id": {"type": "string"},
                        "event_type": {"type": "string"},
                        "user_id": {"type": ["string", "null"]},
                        "status": {
                            "enum": [
                                "pending",
                                "retrying",
                                "processed",
                                "dead_lettered",
                                "waiting_for_user",
                            ]
                        },
                        "attempts": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Failed evaluations so far.",
                        },
                        "next_attempt_at": {
                            "type": ["string", "null"],
                            "format": "date-time",
                            "description": "While retrying: when the next attempt is due.",
                        },
                        "received_at": {"type": "string", "format": "date-time"},
                        "processed_at": {"type": ["string", "null"], "format": "date-time"},
                        "dead_letter_reason": {"type": ["string", "null"]},
                        "unlocks": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["badge", "name", "unlocked_at"],
                                "properties": {
                                    "badge": {"type": "string"},
                                    "name": {"type": "string"},
                                    "unlocked_at": {"type": "string", "format": "date-time"},
                                    "ended": {
                                        "enum": ["revoked", "expired", "lapsed", None],
                                        "description": "Null while held.",
                                    },
                                    "ended_at": {
                                        "type": ["string", "null"],
                                        "format": "date-time",
                                    },
                                },
                            },
                        },
                    },
                },
                "Award": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["reason"],
                    "properties": {
                        "reason": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 500,
                            "description": "Why: kept in the user's badge history.",
                        },
                        "tier": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "period": {"type": "string", "maxLength": 32, "examples": ["2026-W49"]},
                    },
                },
                "LedgerEntry": entry,
                "AwardResult": {
                    "type": "object",
                    "required": ["user_id", "badge", "entries"],
                    "properties": {
                        "user_id": {"type": "string"},
                        "badge": {"type": "string"},
                        "entries": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/LedgerEntry"},
                        },
                    },
                },
                "History": {
                    "type": "object",
                    "required": ["user_id", "entries"],
                    "properties": {
                        "user_id": {"type": "string"},
                        "entries": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/LedgerEntry"},
                        },
                    },
                },
                "UserBadges": {
                    "type": "object",
                    "required": ["user_id", "linked", "pending_events", "badges"],
                    "properties": {
                        "user_id": {"type": "string"},
                        "linked": {"type": "boolean"},
                        "pending_events": {"type": "integer", "minimum": 0},
                        "badges": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": [
                                    "key",
                                    "name",
                                    "earned",
                                    "percent",
                                    "current",
                                    "target",
                                    "requirements",
                                ],
                                "properties": {
                                    "key": {"type": "string"},
                                    "name": {"type": "string"},
                                    "description": {"type": "string"},
                                    "icon": {"type": "string"},
                                    "earned": {"type": "boolean"},
                                    "earned_at": {"type": ["string", "null"]},
                                    "times_earned": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "Repeatable badges: one per period.",
                                    },
                                    "tier": {
                                        "type": "string",
                                        "description": "Tiered badges: the highest tier held.",
                                    },
                                    "next_tier": {"type": "string"},
                                    "granted": {
                                        "type": "boolean",
                                        "description": "Held because staff granted it.",
                                    },
                                    "revoked": {
                                        "type": "boolean",
                                        "description": "Taken back by staff: new activity "
                                        "does not earn it again.",
                                    },
                                    "expires_at": {
                                        "type": ["string", "null"],
                                        "format": "date-time",
                                        "description": "Held and expiring: when.",
                                    },
                                    "expired": {
                                        "type": "boolean",
                                        "description": "Its last earning expired: activity "
                                        "since then earns it again.",
                                    },
                                    "holds_while_met": {
                                        "type": "boolean",
                                        "description": "Held only while its rule holds.",
                                    },
                                    "lost": {
                                        "type": "boolean",
                                        "description": "Not held since its rule stopped "
                                        "holding: meeting it again earns it again.",
                                    },
                                    "percent": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "maximum": 100,
                                        "description": "Towards the next tier or this period's "
                                        "earning where those apply.",
                                    },
                                    "current": {"type": "string"},
                                    "target": {"type": "string"},
                                    "requirements": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "label": {"type": "string"},
                                                "current": {"type": "string"},
                                                "target": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    }
