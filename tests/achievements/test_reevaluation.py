"""Re-evaluation jobs: started in the admin; progress stored and pushed; cancellable; reported."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from achievements import reevaluation
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import BadgeRequirement, Reevaluation, Unlock
from tests.factories import make_places_badge, make_user


@pytest.fixture
def staff_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("boss", "b@example.com", "pw"))
    return client


def visits(user, places):
    for place in places:
        evaluate_event(record_event(user, "visit.created", payload={"place_id": place}).event.pk)


def test_staff_start_a_reevaluation_and_read_its_reconciliation(
    staff_client, owner, second_user, django_capture_on_commit_callbacks
):
    badge = make_places_badge(threshold=3)
    visits(owner, [1, 2])
    visits(second_user, [1, 2, 3])
    assert Unlock.objects.filter(badge=badge).count() == 1
    # The rule changes: 2 places are enough now, and 3 give a Silver tier.
    BadgeRequirement.objects.filter(badge=badge).update(threshold=2)
    badge.tiers = [{"name": "Bronze", "threshold": 2}, {"name": "Silver", "threshold": 3}]
    badge.save()

    response = staff_client.post(
        "/admin/achievements/badge/",
        {"action": "reevaluate", "_selected_action": [badge.pk]},
    )
    assert response.status_code == 302
    start_page = staff_client.get(response["Location"])
    assert (
        "Re-evaluate" in start_page.content.decode() and badge.name in start_page.content.decode()
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/admin/achievements/badge/reevaluate/", {"badge": [badge.pk], "notify": "notify"}
        )
    job = Reevaluation.objects.get()
    assert response["Location"] == f"/admin/achievements/reevaluation/{job.pk}/change/"
    job.refresh_from_db()  # the test settings run the job inline, after the commit
    assert (job.state, job.users_total, job.users_done) == ("done", 2, 2)
    assert job.events_total == job.events_done == 5
    assert sorted((row["user"], row["earning"]) for row in job.report["newly_qualify"]) == [
        ("owner", "Bronze"),
        ("second", "Silver"),
    ]
    assert job.report["newly_qualify_count"] == 2
    assert job.report["holders"] == {badge.name: {"Bronze": 1, "Silver": 1}}
    owner_unlock = Unlock.objects.get(badge=badge, user=owner)
    assert not owner_unlock.silent  # "notify" was chosen: the page toasts it on next connect

    page = staff_client.get(response["Location"]).content.decode()
    assert 'aria-valuenow="100"' in page and "2 user(s) newly qualify" in page
    assert "owner: 3 Places Visited (Bronze)" in page
    assert f'ws-connect="/ws/staff/reevaluations/{job.pk}/"' in page
    assert "Cancel this re-evaluation" not in page  # it has ended


def test_the_start_form_refuses_a_backwards_range_and_starts_nothing(staff_client):
    badge = make_places_badge(threshold=3)
    response = staff_client.post(
        "/admin/achievements/badge/reevaluate/",
        {"badge": [badge.pk], "since": "2026-11-10", "until": "2026-11-01", "notify": "silent"},
    )
    assert response.status_code == 200
    assert "Give a time after the start of the range." in response.content.decode()
    assert not Reevaluation.objects.exists()


def test_a_cancelled_job_stops_before_its_next_user(db, monkeypatch):
    badge = make_places_badge(threshold=1)
    users = [make_user(username=f"u{n}") for n in range(4)]
    for user in users:
        visits(user, [1])
    job = Reevaluation.objects.create()
    job.badges.set([badge])
    original = reevaluation._Pacer.after_user

    def cancel_after_first(self, users_done, events_done):
        if users_done == 1:
            assert reevaluation.cancel(job.pk)
        original(self, users_done, events_done)

    monkeypatch.setattr(reevaluation._Pacer, "after_user", cancel_after_first)
    reevaluation.run(job.pk)
    job.refresh_from_db()
    assert (job.state, job.users_done, job.users_total) == ("cancelled", 1, 4)
    assert job.finished_at is not None
    reevaluation.run(job.pk)  # an ended job is never taken again
    job.refresh_from_db()
    assert job.users_done == 1


def test_a_queued_job_cancels_at_once(db):
    job = Reevaluation.objects.create()
    assert reevaluation.cancel(job.pk)
    job.refresh_from_db()
    assert job.state == "cancelled"
    assert not reevaluation.cancel(job.pk)


def test_progress_is_pushed_to_the_jobs_group(db, monkeypatch):
    sent = []
    monkeypatch.setattr(
        reevaluation.realtime, "send_to_group", lambda group, messages: sent.append(group)
    )
    badge = make_places_badge(threshold=1)
    job = Reevaluation.objects.create()
    job.badges.set([badge])
    reevaluation.run(job.pk)
    assert sent and set(sent) == {f"reevaluation.{job.pk}"}


def test_a_job_whose_badges_are_gone_fails_instead_of_replaying_everything(db, owner):
    from tests.factories import make_badge

    badge = make_places_badge(threshold=1)

    bystander = make_badge(key="any_visit", requirements=[])
    BadgeRequirement.objects.create(badge=bystander, event_type="visit.created", threshold=1)
    job = Reevaluation.objects.create(notify=True)
    job.badges.set([badge])
    type(badge).objects.filter(pk=badge.pk).update(is_active=False)
    record_event(owner, "visit.created", payload={"place_id": 1})  # evaluated inline
    before = Unlock.objects.count()
    reevaluation.run(job.pk)
    job.refresh_from_db()
    assert job.state == "failed" and "None of the job's badges is active" in job.error
    assert Unlock.objects.count() == before


def test_a_job_whose_worker_died_can_still_be_cancelled(db):
    from datetime import timedelta

    from django.utils import timezone

    job = Reevaluation.objects.create(
        state="running", heartbeat_at=timezone.now() - timedelta(minutes=10)
    )
    assert reevaluation.cancel(job.pk)
    job.refresh_from_db()
    assert job.state == "cancelled" and job.finished_at is not None


def test_starting_a_job_takes_the_reevaluation_permission(client, db):
    from django.contrib.auth.models import Permission

    editor = make_user(username="editor", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(codename__in=["change_badge", "view_badge"])
    )
    client.force_login(editor)
    badge = make_places_badge(threshold=1)
    assert client.get(f"/admin/achievements/badge/reevaluate/?ids={badge.pk}").status_code == 403


@pytest.mark.parametrize("ids", ["²", "99999999999999999999999", "x,,", ""])
def test_odd_badge_ids_are_refused_without_a_500(staff_client, ids):
    response = staff_client.get(f"/admin/achievements/badge/reevaluate/?ids={ids}")
    assert response.status_code == 302
    assert not Reevaluation.objects.exists()


def test_a_run_presumed_lost_stops_without_overwriting_the_run_that_took_over(db, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    badge = make_places_badge(threshold=1)
    for n in range(3):
        visits(make_user(username=f"u{n}"), [1])
    job = Reevaluation.objects.create()
    job.badges.set([badge])
    original = reevaluation._Pacer.after_user
    takeover = timezone.now() + timedelta(minutes=5)

    def taken_over_after_first(self, users_done, events_done):
        if users_done == 1:
            # A second run claimed the job while this one was stuck on a user.
            Reevaluation.objects.filter(pk=job.pk).update(started_at=takeover, users_done=0)
        original(self, users_done, events_done)

    monkeypatch.setattr(reevaluation._Pacer, "after_user", taken_over_after_first)
    reevaluation.run(job.pk)  # returns quietly
    job.refresh_from_db()
    assert (job.state, job.started_at, job.users_done, job.report) == (
        "running",
        takeover,
        0,
        {},  # no report written over the other run's
    )


@pytest.mark.django_db(transaction=True)
def test_a_long_user_keeps_the_job_heartbeat_fresh(monkeypatch):
    import time

    badge = make_places_badge(threshold=1)
    visits(make_user(username="slow"), [1])
    job = Reevaluation.objects.create()
    job.badges.set([badge])
    monkeypatch.setattr(reevaluation, "HEARTBEAT_SECONDS", 0.05)
    beats = []
    original = reevaluation.replay_events

    def slow_replay(**kwargs):
        # One user whose replay takes a while: the heartbeat must move meanwhile.
        for _ in range(3):
            time.sleep(0.2)
            beats.append(Reevaluation.objects.get(pk=job.pk).heartbeat_at)
        return original(**kwargs)

    monkeypatch.setattr(reevaluation, "replay_events", slow_replay)
    reevaluation.run(job.pk)
    assert len(set(beats)) == 3, beats
    assert Reevaluation.objects.get(pk=job.pk).state == "done"
