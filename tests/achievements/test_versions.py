"""Rule versions and unlock provenance (issue 6: who changed what, and what an unlock rests on)."""

from __future__ import annotations

import json

import pytest

from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge, BadgeRequirement, BadgeVersion, Unlock
from achievements.rulefiles import document, export_badges, import_badges
from achievements.versions import diff, record_version
from tests.achievements.test_admin import _inline_post
from tests.factories import make_badge


@pytest.fixture
def admin_client(client, db):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("boss", "b@example.com", "pw"))
    return client


def test_every_saved_change_in_the_admin_is_a_version_with_who_and_what(admin_client):
    admin_client.post("/admin/achievements/badge/add/", _inline_post())
    badge = Badge.objects.get(key="photo_fan")
    [first] = badge.versions.all()
    assert (first.number, first.source, first.changes) == (1, "admin", ["first version"])
    assert first.created_by and first.created_by.username == "boss"
    assert first.rule["requirements"][0]["threshold"] == "3"

    requirement = badge.requirements.get()
    data = _inline_post(threshold="5", id=str(requirement.pk), badge=str(badge.pk))
    data["requirements-INITIAL_FORMS"] = "1"
    url = f"/admin/achievements/badge/{badge.pk}/change/"
    assert admin_client.post(url, data).status_code == 302
    second = badge.versions.get(number=2)
    assert second.changes == ['requirements[0].threshold: "3" → "5"']
    # Saving without a change adds no version.
    assert admin_client.post(url, data).status_code == 302
    assert badge.versions.count() == 2

    page = admin_client.get(f"/admin/achievements/badge/{badge.pk}/history/").content.decode()
    assert "Rule versions" in page and "v2" in page
    assert "requirements[0].threshold: &quot;3&quot; → &quot;5&quot;" in page
    change_page = admin_client.get(url).content.decode()
    assert "Version 2</a> (2 of them" in change_page


def test_imports_record_versions_and_unchanged_files_do_not(db):
    make_badge(key="visitor", requirements=[{"event_type": "visit.created", "threshold": 1}])
    exported = export_badges()
    import_badges(exported)
    badge = Badge.objects.get(key="visitor")
    assert list(badge.versions.values_list("number", "source")) == [(1, "import")]
    import_badges(exported)
    assert badge.versions.count() == 1
    exported["badges"][0]["requirements"].append({"event_type": "image.posted", "threshold": "2"})
    exported["badges"][0]["tiers"] = []
    import_badges(exported, source="import_badges")
    latest = badge.versions.get(number=2)
    assert latest.source == "import_badges"
    assert latest.changes[0].startswith('requirements[1]: added {"aggregation": "count"')


def test_diff_names_each_changed_field():
    old = {
        "name": "A",
        "tiers": [{"name": "Bronze", "threshold": 5}, {"name": "Gold", "threshold": 12}],
        "requirements": [{"threshold": "1", "steps": ["a.b", "c.d"]}, {"threshold": "2"}],
    }
    new = {
        "name": "B",
        "tiers": [{"name": "Bronze", "threshold": 5}, {"name": "Gold", "threshold": 11}],
        "repeat": "week",
        "requirements": [{"threshold": "1", "steps": ["a.b", "e.f"]}],
    }
    assert diff(old, new) == [
        'name: "A" → "B"',
        "tiers[1].threshold: 12 → 11",
        'requirements[0].steps[1]: "c.d" → "e.f"',
        'requirements[1]: removed {"threshold": "2"}',
        'repeat: (none) → "week"',
    ]


def test_versions_are_immutable(db):
    badge = make_badge(
        key="visitor", requirements=[{"event_type": "visit.created", "threshold": 1}]
    )
    version = record_version(badge, source="test")
    with pytest.raises(ValueError, match="immutable"):
        version.save()


def test_an_unlock_records_its_rule_version_and_the_events_that_completed_it(owner):
    badge = make_badge(
        key="both",
        requirements=[
            {"event_type": "visit.created", "threshold": 2},
            {"event_type": "image.posted", "threshold": 1},
        ],
    )
    version = record_version(badge, source="test")
    for event_id, event_type in [
        ("v-1", "visit.created"),
        ("v-2", "visit.created"),  # meets the visits requirement
        ("v-3", "visit.created"),
        ("i-1", "image.posted"),  # meets the last one: unlocks
    ]:
        evaluate_event(record_event(owner, event_type, event_id=event_id).event.pk)
    unlock = Unlock.objects.get(badge=badge)
    assert (unlock.version, unlock.event_ids) == (version, ["v-2", "i-1"])

    # A composite rests on the events its parts rested on.
    whole = make_badge(key="whole", requirements=[])
    BadgeRequirement.objects.create(
        badge=whole, kind="composite", threshold=0
    ).composite_badges.set([badge])
    other = make_badge(key="later", requirements=[{"event_type": "visit.created", "threshold": 1}])
    evaluate_event(record_event(owner, "visit.created", event_id="v-4").event.pk)
    assert Unlock.objects.get(badge=other).event_ids == ["v-4"]
    # The composite was added after its part unlocked: a replay awards it.
    from achievements.replay import replay_events

    replay_events()
    composite_unlock = Unlock.objects.get(badge=whole)
    assert composite_unlock.event_ids == ["v-2", "i-1"]
    # First unlock of a badge nobody saved through the admin or a file: v1 is recorded.
    assert composite_unlock.version == BadgeVersion.objects.get(badge=whole, number=1)
    assert composite_unlock.version.source == "first unlock"


def test_the_preview_apply_is_a_version_by_the_staff_member(admin_client):
    badge = make_badge(
        key="visitor", requirements=[{"event_type": "visit.created", "threshold": 1}]
    )
    rule = {"requirements": [{"event_type": "visit.created", "threshold": "4"}]}
    response = admin_client.post(
        f"/admin/achievements/badge/{badge.pk}/preview/",
        {"rule": json.dumps(rule), "_apply": "Apply"},
    )
    assert response.status_code == 302
    [version] = badge.versions.all()
    assert version.created_by is not None
    assert (version.source, version.created_by.username) == ("admin preview", "boss")
    assert import_badges(document([version.rule])) == (0, 1)  # a version re-imports as is


def test_evaluations_record_missing_first_versions_before_their_transaction(db, owner):
    """Badges made without the admin or an import have no version; a batch records
    one for every active badge before it opens its transaction, not only for the
    badges it unlocks inside it, and after that asks no more."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements.engine import evaluate_events
    from achievements.versions import ensure_versions

    quick, far = [Badge.objects.create(key=key, name=key) for key in ("quick", "far")]
    BadgeRequirement.objects.create(badge=quick, event_type="visit.created", threshold=1)
    BadgeRequirement.objects.create(badge=far, event_type="visit.created", threshold=100)
    assert not BadgeVersion.objects.filter(badge__in=[quick, far]).exists()
    evaluate_events([record_event(owner, "visit.created").event.pk])
    assert not Unlock.objects.filter(badge=far).exists()
    for badge in (quick, far):
        [version] = BadgeVersion.objects.filter(badge=badge)
        assert (version.number, version.source) == (1, "first unlock")
    assert Unlock.objects.get(badge=quick, user=owner).version == BadgeVersion.objects.get(
        badge=quick
    )
    with CaptureQueriesContext(connection) as queries:
        ensure_versions([quick.pk, far.pk])
    assert len(queries) == 0


def test_batches_take_the_version_from_the_rules_they_evaluate_and_follow_new_ones(db, owner):
    """The rules index knows each badge's latest version, so an unlock costs no
    version query; a version recorded later (an admin save, an import) is what
    the next unlock records."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements import index
    from achievements.engine import evaluate_events
    from achievements.versions import ensure_versions

    badge = Badge.objects.create(
        key="steps",
        name="Steps",
        tiers=[{"name": "One", "threshold": 1}, {"name": "Two", "threshold": 2}],
    )
    BadgeRequirement.objects.create(badge=badge, event_type="visit.created", threshold=1)
    first = record_version(badge, source="test")
    index.active_badges()  # built, and the first versions checked, before the batch
    ensure_versions([badge.pk])
    with CaptureQueriesContext(connection) as queries:
        evaluate_events([record_event(owner, "visit.created").event.pk])
    assert Unlock.objects.get(badge=badge, tier=1).version == first
    assert not [q for q in queries if BadgeVersion._meta.db_table in q["sql"]]

    badge.name = "Steps taken"
    badge.save()
    index.active_badges()  # rebuilt from the saved badge before its version is recorded
    second = record_version(badge, source="test")
    assert second.number == 2
    evaluate_events([record_event(owner, "visit.created").event.pk])
    assert Unlock.objects.get(badge=badge, tier=2).version == second


def _unversioned(count: int, prefix: str) -> list[Badge]:
    """Badges made without the admin or an import (a shell, a data migration): no version."""
    badges = []
    for n in range(count):
        part = Badge.objects.create(key=f"{prefix}_part_{n}", name=f"Part {n}")
        BadgeRequirement.objects.create(badge=part, event_type="visit.created", threshold=n + 1)
        whole = Badge.objects.create(key=f"{prefix}_whole_{n}", name=f"Whole {n}")
        requirement = BadgeRequirement.objects.create(
            badge=whole, kind="composite", event_type="", threshold=1
        )
        requirement.composite_badges.set([part])
        badges += [part, whole]
    return badges


def test_missing_first_versions_are_recorded_together_in_a_fixed_number_of_queries(db):
    """A thousand badges made outside the admin took the first batch 4.1 s, a
    version at a time (bench/evaluation.py); now the count of badges does not
    change the count of queries, and each version is what its badge exports."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements import index
    from achievements.rulefiles import export_badges_data
    from achievements.versions import ensure_versions

    few, many = _unversioned(2, "few"), _unversioned(20, "many")
    index.active_badges()  # built before: only a new version token rebuilds it
    queries = []
    for badges in (few, many):
        with CaptureQueriesContext(connection) as captured:
            ensure_versions(badge.pk for badge in badges)
        queries.append(len(captured))
    assert queries[0] == queries[1]
    stored = {v.badge_id: v for v in BadgeVersion.objects.filter(badge__in=few + many)}
    assert len(stored) == len(few + many)
    expected = export_badges_data(Badge.objects.filter(pk__in=stored).order_by("pk"))
    for rule in expected:
        version = stored[Badge.objects.get(key=rule["key"]).pk]
        assert (version.number, version.source, version.changes) == (
            1,
            "first unlock",
            ["first version"],
        )
        assert version.rule == rule
    assert [r["composite_badges"] for r in expected[1]["requirements"]] == [["few_part_0"]]
    # The rules index learns the new versions (bulk_create sends no post_save).
    assert index.version_of(few[0].pk) == stored[few[0].pk].pk


def test_recording_many_versions_adds_only_the_changed_ones(db):
    from achievements.versions import record_versions

    kept, changed = _unversioned(1, "v")
    first = record_versions([kept.pk, changed.pk], source="test")
    assert {v.number for v in first.values()} == {1}
    changed.name = "Renamed"
    changed.save()
    second = record_versions([kept.pk, changed.pk], source="test")
    assert second[kept.pk] == first[kept.pk]
    assert second[changed.pk].number == 2
    assert second[changed.pk].changes == ['name: "Whole 0" → "Renamed"']
    assert BadgeVersion.objects.count() == 3


def test_a_version_of_a_badge_that_is_gone_is_refused(db):
    badge = Badge.objects.create(key="gone", name="Gone")
    Badge.objects.filter(pk=badge.pk).delete()
    with pytest.raises(Badge.DoesNotExist):
        record_version(badge, source="test")
    assert not BadgeVersion.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_first_versions_wait_for_a_rule_writer_before_the_evaluation_transaction(
    postgresql_only, owner
):
    """A writer of rules (an admin save, an import) holds its badge's row while it
    replaces the requirements, which deletes their progress rows. An evaluation
    recording first versions meanwhile skips that badge in its bulk pass and
    then waits for it alone, before its own transaction: recorded inside it (the
    unlock's fallback), it waited holding the progress row the writer deletes,
    and PostgreSQL found a deadlock (a review's probe, every run)."""
    import threading
    import time

    from django.db import connection, transaction

    from achievements import index
    from achievements.models import RequirementProgress
    from achievements.versions import _versioned

    held = Badge.objects.create(key="held", name="Held")
    BadgeRequirement.objects.create(badge=held, event_type="visit.created", threshold=2)
    free = _unversioned(1, "free")[0]  # its part badge
    record_event(owner, "visit.created")  # a committed progress row for the writer to delete
    assert RequirementProgress.objects.filter(requirement__badge=held).exists()
    BadgeVersion.objects.all().delete()  # as made outside the admin
    _versioned.clear()
    index.invalidate()
    locked, errors = threading.Event(), []

    def writer() -> None:
        try:
            with transaction.atomic():
                Badge.objects.filter(pk=held.pk).update(name="Held, edited")
                locked.set()
                time.sleep(0.5)  # the evaluation reaches the badge meanwhile
                RequirementProgress.objects.filter(requirement__badge=held).delete()
                record_version(Badge.objects.get(pk=held.pk), source="admin")
        except Exception as exc:  # a deadlock victim, surfaced below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert locked.wait(30)
        record_event(owner, "visit.created")  # evaluated at once (sync task mode)
    finally:
        thread.join(30)
    assert errors == []
    [version] = BadgeVersion.objects.filter(badge=held)
    assert (version.source, version.rule["name"]) == ("admin", "Held, edited")
    assert BadgeVersion.objects.get(badge=free).source == "first unlock"
    assert held.pk in _versioned
