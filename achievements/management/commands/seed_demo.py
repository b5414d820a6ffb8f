from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from achievements.models import Badge, BadgeTranslation, EventType, ExternalIdentity
from achievements.rulefiles import document, import_badges
from examples.places.models import Place

DEMO_PASSWORD = "accolade-demo"

DEMO_PLACES = [
    "Lisbon",
    "Kyoto",
    "Reykjavík",
    "Cape Town",
    "Montréal",
    "Oaxaca",
    "Tallinn",
    "Hobart",
    "Marrakesh",
    "Valparaíso",
    "Hanoi",
    "Bergen",
]

# In the rule-file format (docs/rules.md).
DEMO_BADGES: list[dict[str, Any]] = [
    {
        "key": "places_visited_5",
        "name": "5 Places Visited",
        "description": "Visit five different places.",
        "category": "Travel",
        "icon": "🧭",
        "sort_order": 10,
        "requirements": [
            {
                "event_type": "visit.created",
                "aggregation": "distinct",
                "field": "place_id",
                "threshold": "5",
                "label": "different places",
            }
        ],
    },
    {
        "key": "images_posted_10",
        "name": "10 Images Posted",
        "description": "Post ten photos.",
        "category": "Photos",
        "icon": "📸",
        "sort_order": 20,
        "requirements": [
            {
                "event_type": "image.posted",
                "aggregation": "count",
                "threshold": "10",
                "label": "images posted",
            }
        ],
    },
    {
        "key": "globetrotter",
        "name": "Globetrotter",
        "description": "Visit ever more places: Bronze, Silver, then Gold.",
        "category": "Travel",
        "icon": "🌍",
        "sort_order": 30,
        "tiers": [
            {"name": "Bronze", "threshold": 6},
            {"name": "Silver", "threshold": 9},
            {"name": "Gold", "threshold": 12},
        ],
        "requirements": [
            {
                "event_type": "visit.created",
                "aggregation": "distinct",
                "field": "place_id",
                "threshold": "6",
                "label": "different places",
            }
        ],
    },
    {
        "key": "daily_snapshots",
        "name": "Daily Snapshots",
        "description": "Post three photos in a day. Earn it again every day.",
        "category": "Photos",
        "icon": "🗓️",
        "sort_order": 40,
        "repeat": "day",
        "requirements": [
            {
                "event_type": "image.posted",
                "aggregation": "count",
                "threshold": "3",
                "scope": "day",
                "label": "photos",
            }
        ],
    },
    {
        "key": "on_a_roll",
        "name": "On a Roll",
        "description": "Post a photo three days in a row. Yours while the streak lasts.",
        "category": "Photos",
        "icon": "🔥",
        "sort_order": 50,
        "holds_while_met": True,
        "announce_endings": True,
        "requirements": [
            {
                "kind": "streak",
                "event_type": "image.posted",
                "threshold": "3",
                "streak_unit": "day",
            }
        ],
    },
    {
        "key": "photo_marathon",
        "name": "Photo Marathon",
        "description": "Post twenty photos, five of them on one day.",
        "category": "Photos",
        "icon": "🏃",
        "sort_order": 60,
        "requirements": [
            {
                "event_type": "image.posted",
                "aggregation": "count",
                "threshold": "20",
                "label": "photos",
            },
            {
                "event_type": "image.posted",
                "aggregation": "count",
                "threshold": "5",
                "scope": "day",
                "label": "photos",
            },
        ],
    },
    {
        "key": "first_frame",
        "name": "First Frame",
        "description": "You posted your first photo.",
        "category": "Photos",
        "icon": "🎞️",
        "sort_order": 70,
        "hidden": True,
        "requirements": [
            {
                "event_type": "image.posted",
                "aggregation": "count",
                "threshold": "1",
                "label": "photos",
            }
        ],
    },
]


# The demo badges' words in French (staff write these in the badge's admin page).
DEMO_TRANSLATIONS: dict[str, dict[str, Any]] = {
    "places_visited_5": {
        "name": "5 lieux visités",
        "description": "Visitez cinq lieux différents.",
        "labels": ["lieux différents"],
    },
    "images_posted_10": {
        "name": "10 images publiées",
        "description": "Publiez dix photos.",
        "labels": ["images publiées"],
    },
    "globetrotter": {
        "name": "Globe-trotteur",
        "description": "Visitez toujours plus de lieux : bronze, argent, puis or.",
        "tier_names": ["Bronze", "Argent", "Or"],
        "labels": ["lieux différents"],
    },
    "daily_snapshots": {
        "name": "Clichés du jour",
        "description": "Publiez trois photos dans la journée. À regagner chaque jour.",
        "labels": ["photos"],
    },
    "on_a_roll": {
        "name": "Sur sa lancée",
        "description": "Publiez une photo trois jours de suite. À vous tant que la série dure.",
    },
    "photo_marathon": {
        "name": "Marathon photo",
        "description": "Publiez vingt photos, dont cinq le même jour.",
        "labels": ["photos", "photos"],
    },
    "first_frame": {
        "name": "Première image",
        "description": "Vous avez publié votre première photo.",
        "labels": ["photos"],
    },
}


class Command(BaseCommand):
    help = "Create demo users, places and badges. Safe to run again: it updates in place."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--quiet-logins", action="store_true", help="Do not print the demo log-ins."
        )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for name in DEMO_PLACES:
            Place.objects.get_or_create(name=name)
        for event_type in ("visit.created", "image.posted"):
            EventType.objects.get_or_create(
                name=event_type, defaults={"description": "Sent by the example producer."}
            )

        # Through the rule-file import, which keeps requirements that did not
        # change, so re-seeding does not throw away users' progress.
        import_badges(document(DEMO_BADGES), source="seed_demo")
        for key, words in DEMO_TRANSLATIONS.items():
            BadgeTranslation.objects.update_or_create(
                badge=Badge.objects.get(key=key), language="fr", defaults=words
            )

        logins = [("alice", False), ("bob", False), ("admin", True)]
        for username, is_staff in logins:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": is_staff, "is_superuser": is_staff}
            )
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save()
            if not is_staff:
                # The HTTP API addresses users by the producer's id; the demo's are the names.
                ExternalIdentity.objects.get_or_create(
                    external_id=username, defaults={"user": user, "linked_at": timezone.now()}
                )

        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: {len(DEMO_PLACES)} places, {len(DEMO_BADGES)} badges."
            )
        )
        if not options["quiet_logins"]:
            self.stdout.write(f"Demo log-ins (password for each: {DEMO_PASSWORD}):")
            self.stdout.write("  alice, bob  – ordinary users")
            self.stdout.write("  admin       – staff, for /admin/")
