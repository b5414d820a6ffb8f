"""The engine's state, a module per concept; every model is importable from here.

badges     Badge, BadgeRequirement: the rules as data
events     Event (the outbox), EventType, ExternalIdentity, DedupRule
standings  RequirementProgress, DistinctValue, UserBadge, Unlock
ledger     LedgerEntry: every earning, grant, revocation and expiry
versions   BadgeVersion
jobs       Reevaluation, ActivityDay
"""

from __future__ import annotations

from achievements.core import Standing
from achievements.models.badges import (
    EVALUATED_AGGREGATIONS,
    EVALUATED_KINDS,
    EVALUATED_OPERATORS,
    EVALUATED_SCOPES,
    Badge,
    BadgeQuerySet,
    BadgeRequirement,
    BadgeRequirementQuerySet,
    BadgeTranslation,
    accepted_event_types,
    translation_of,
)
from achievements.models.events import (
    TYPE_SAMPLE_SIZE,
    DedupRule,
    Event,
    EventQuerySet,
    EventType,
    ExternalIdentity,
    payload_field_types,
    validate_event_type,
)
from achievements.models.jobs import ActivityDay, Reevaluation
from achievements.models.ledger import Entry, LedgerEntry, LedgerQuerySet
from achievements.models.standings import (
    DistinctValue,
    Ending,
    RequirementProgress,
    Unlock,
    UnlockQuerySet,
    UserBadge,
    progress_share,
)
from achievements.models.versions import BadgeVersion
from achievements.progress import format_number

__all__ = [
    "EVALUATED_AGGREGATIONS",
    "EVALUATED_KINDS",
    "EVALUATED_OPERATORS",
    "EVALUATED_SCOPES",
    "TYPE_SAMPLE_SIZE",
    "ActivityDay",
    "Badge",
    "BadgeQuerySet",
    "BadgeRequirement",
    "BadgeTranslation",
    "BadgeRequirementQuerySet",
    "BadgeVersion",
    "DedupRule",
    "DistinctValue",
    "Ending",
    "Entry",
    "Event",
    "EventQuerySet",
    "EventType",
    "ExternalIdentity",
    "LedgerEntry",
    "LedgerQuerySet",
    "Reevaluation",
    "RequirementProgress",
    "Standing",
    "Unlock",
    "UnlockQuerySet",
    "UserBadge",
    "accepted_event_types",
    "translation_of",
    "format_number",
    "payload_field_types",
    "progress_share",
    "validate_event_type",
]
