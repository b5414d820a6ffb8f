"""Re-evaluating badges over the stored events, as a background job staff can watch.

Staff start a job from the admin (a badge action); it runs as a Celery task
(a thread in the embedded mode), replaying the chosen badges user by user
with achievements.replay. Between users it stores its progress, pushes it to
the staff page over the channel layer, stops if staff cancelled it, and
throttles itself so live evaluation keeps the worker: a cap on events per
second, and a pause while live events wait in the broker's queue.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from achievements import dispatch, metrics, realtime
from achievements.db import after_commit
from achievements.models import Badge, Reevaluation, UserBadge
from achievements.replay import ReplayReport, plan_replay, replay_events

logger = logging.getLogger(__name__)

PUSH_INTERVAL_SECONDS = 0.5
# A job whose heartbeat is older than this was lost with its worker and may be taken again.
STALE_AFTER = timedelta(minutes=2)
# A running job beats this often from a thread of its own, so a user whose
# replay takes minutes never makes a live job look lost.
HEARTBEAT_SECONDS = 20.0
REPORT_LIMIT = 1000  # users listed per section of the stored report


class Cancelled(Exception):
    pass


class TakenOver(Exception):
    """Another run claimed the job (this one was thought lost); stop without writing."""


def group(job_id: int) -> str:
    return f"reevaluation.{int(job_id)}"


def start(
    badges: list[Badge],
    *,
    since: datetime | None,
    until: datetime | None,
    notify: bool,
    by: Any,
) -> Reevaluation:
    """Create the job and hand it to a worker once the transaction commits."""
    job = Reevaluation.objects.create(
        since=since,
        until=until,
        notify=notify,
        created_by=by if getattr(by, "is_authenticated", False) else None,
    )
    job.badges.set(badges)
    after_commit(enqueue, job.pk)
    return job


def enqueue(job_id: int) -> None:
    mode = settings.ACCOLADE_TASK_MODE
    if mode == "celery":
        try:
            dispatch.task("achievements.run_reevaluation").delay(job_id)
        except Exception:
            logger.exception("Could not enqueue re-evaluation %s", job_id)
            Reevaluation.objects.filter(pk=job_id, state=Reevaluation.State.QUEUED).update(
                state=Reevaluation.State.FAILED,
                error="The task queue could not be reached; start the job again.",
                finished_at=timezone.now(),
            )
    elif mode == "thread":
        # Its own thread: the embedded evaluator's thread stays free for live events.
        threading.Thread(
            target=_run_in_thread,
            args=[job_id],
            name=f"accolade-reevaluation-{job_id}",
            daemon=True,
        ).start()
    else:
        run(job_id)


def _run_in_thread(job_id: int) -> None:
    try:
        run(job_id)
    finally:
        close_old_connections()


def cancel(job_id: int) -> bool:
    """Ask a queued or running job to stop; it stops before its next user.

    A job whose worker is gone (no heartbeat for STALE_AFTER) cannot stop
    itself, so it is marked cancelled at once.
    """
    now = timezone.now()
    at_once = Reevaluation.objects.filter(
        Q(state=Reevaluation.State.QUEUED)
        | Q(
            state__in=[Reevaluation.State.RUNNING, Reevaluation.State.CANCELLING],
            heartbeat_at__lt=now - STALE_AFTER,
        ),
        pk=job_id,
    ).update(state=Reevaluation.State.CANCELLED, finished_at=now)
    running = Reevaluation.objects.filter(pk=job_id, state=Reevaluation.State.RUNNING).update(
        state=Reevaluation.State.CANCELLING
    )
    if at_once:
        push(Reevaluation.objects.get(pk=job_id))
    return bool(at_once or running)


def run(job_id: int) -> None:
    """Run the job: claim it, replay its badges user by user, write the report."""
    now = timezone.now()
    claimed = Reevaluation.objects.filter(
        Q(state=Reevaluation.State.QUEUED)
        | Q(state=Reevaluation.State.RUNNING, heartbeat_at__lt=now - STALE_AFTER),
        pk=job_id,
    ).update(state=Reevaluation.State.RUNNING, started_at=now, heartbeat_at=now)
    if not claimed:
        return
    # The claim time marks this run: every later write matches it, so a run
    # that was presumed lost and then wakes up can never overwrite another's.
    job = Reevaluation.objects.get(pk=job_id)
    heartbeat = _Heartbeat(job_id, now)
    heartbeat.start()
    try:
        _run_claimed(job)
    except TakenOver:
        logger.warning("Re-evaluation %s was taken over by another run; this one stops", job_id)
    finally:
        heartbeat.stop()


def _run_claimed(job: Reevaluation) -> None:
    keys = list(job.badges.filter(is_active=True).values_list("key", flat=True))
    report = ReplayReport()
    if not keys:
        # Its badges were deleted or deactivated since: never fall back to "every badge".
        job.error = "None of the job's badges is active any more; nothing was re-evaluated."
        _finish(job, report, Reevaluation.State.FAILED)
        return
    try:
        plan = plan_replay(since=job.since, until=job.until, badge_keys=keys)
        job.users_total, job.events_total = len(plan.user_ids), plan.events()
        job.save(update_fields=["users_total", "events_total"])
        push(job)
        pacer = _Pacer(job)
        replay_events(
            plan=plan,
            report=report,
            silent=not job.notify,
            on_progress=lambda done, total: pacer.after_user(done, report.events),
            # One user per transaction: the pacer throttles, stores progress
            # and honours a cancel between users, and a job running beside
            # live evaluation holds each user's rows only briefly.
            chunk_users=1,
        )
    except Cancelled:
        _finish(job, report, Reevaluation.State.CANCELLED)
    except TakenOver:
        raise
    except Exception as exc:
        logger.exception("Re-evaluation %s failed", job.pk)
        job.error = "".join(traceback.format_exception(exc))[-5000:]
        _finish(job, report, Reevaluation.State.FAILED)
    else:
        _finish(job, report, Reevaluation.State.DONE)


class _Pacer:
    """Between users: store and push progress, honour a cancel, and throttle."""

    def __init__(self, job: Reevaluation) -> None:
        self.job = job
        self.started = time.monotonic()
        self.last_push = 0.0
        self.max_rate = float(settings.ACCOLADE_REEVALUATION_MAX_EVENTS_PER_SECOND)

    def after_user(self, users_done: int, events_done: int) -> None:
        job = self.job
        job.users_done, job.events_done = users_done, events_done
        job.heartbeat_at = timezone.now()
        # One query stores progress and, by matching nothing, tells of a cancel.
        still_running = Reevaluation.objects.filter(
            pk=job.pk, state=Reevaluation.State.RUNNING, started_at=job.started_at
        ).update(users_done=users_done, events_done=events_done, heartbeat_at=job.heartbeat_at)
        if not still_running:
            if Reevaluation.objects.filter(pk=job.pk, started_at=job.started_at).exists():
                raise Cancelled
            raise TakenOver
        if time.monotonic() - self.last_push >= PUSH_INTERVAL_SECONDS:
            self.last_push = time.monotonic()
            push(job)
        self._throttle(events_done)

    def _throttle(self, events_done: int) -> None:
        if self.max_rate > 0:
            ahead = events_done / self.max_rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(min(ahead, 5.0))
        # Live events first: wait (a little) while they queue up in the broker.
        waited = 0.0
        while waited < 2.0:
            try:
                depth = metrics.queue_depth()
            except Exception:
                return
            if not depth:
                return
            time.sleep(0.05)
            waited += 0.05


def _finish(job: Reevaluation, report: ReplayReport, state: str) -> None:
    job.state = state
    job.finished_at = timezone.now()
    job.users_done, job.events_done = report.users, report.events
    job.report = build_report(job, report)
    written = Reevaluation.objects.filter(pk=job.pk, started_at=job.started_at).update(
        state=job.state,
        finished_at=job.finished_at,
        users_done=job.users_done,
        events_done=job.events_done,
        report=job.report,
        error=job.error,
    )
    if not written:
        raise TakenOver
    push(job)


class _Heartbeat:
    """Keeps a claimed job's heartbeat fresh from a thread while the run works."""

    def __init__(self, job_id: int, claimed_at: datetime) -> None:
        self.job_id, self.claimed_at = job_id, claimed_at
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"reevaluation-{job_id}-heartbeat", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    Reevaluation.objects.filter(
                        pk=self.job_id,
                        started_at=self.claimed_at,
                        state__in=[Reevaluation.State.RUNNING, Reevaluation.State.CANCELLING],
                    ).update(heartbeat_at=timezone.now())
                except Exception as exc:
                    # SQLite is locked while the replay writes; the next beat retries.
                    logger.warning("Re-evaluation %s: heartbeat missed (%s)", self.job_id, exc)
                    connections.close_all()
        finally:
            connections.close_all()  # this thread's own connections


def build_report(job: Reevaluation, report: ReplayReport) -> dict[str, Any]:
    """The reconciliation: who newly qualifies, who no longer does, and holders per tier."""
    from django.contrib.auth import get_user_model

    badges = {badge.pk: badge for badge in job.badges.all()}
    users = (
        {user for user, *_ in report.newly_earned}
        | {user for user, _ in report.no_longer_qualifying}
        | {user for user, _, _ in report.lost}
    )
    names = dict(get_user_model().objects.filter(pk__in=users).values_list("pk", "username"))

    def earning(badge: Badge, tier: int, period: str) -> str:
        return badge.tier_name(tier) or period or ""

    newly = sorted({row for row in report.newly_earned if row[1] in badges})
    no_longer = sorted({row for row in report.no_longer_qualifying if row[1] in badges})
    lost = sorted({row for row in report.lost if row[1] in badges})
    tiers: dict[str, dict[str, int]] = {}
    for badge in badges.values():
        names_by_level = {level: name for level, (name, _) in enumerate(badge.tier_list(), 1)}
        holders = UserBadge.objects.filter(badge=badge, completed_at__isnull=False)
        if names_by_level:
            counts = Counter(holders.values_list("tier", flat=True))
            tiers[badge.name] = {
                name: counts.get(level, 0) for level, name in names_by_level.items()
            }
        else:
            tiers[badge.name] = {"Unlocked": holders.count()}
    return {
        "newly_qualify": [
            {
                "user": names.get(user, str(user)),
                "badge": badges[badge].name,
                "earning": earning(badges[badge], tier, period),
            }
            for user, badge, tier, period in newly[:REPORT_LIMIT]
        ],
        "newly_qualify_count": len({(user, badge) for user, badge, _, _ in newly}),
        "no_longer_qualify": [
            {"user": names.get(user, str(user)), "badge": badges[badge].name}
            for user, badge in no_longer[:REPORT_LIMIT]
        ],
        "no_longer_qualify_count": len(no_longer),
        # Badges held only while their rule holds: taken from these holders.
        "lost": [
            {
                "user": names.get(user, str(user)),
                "badge": badges[badge].name,
                "earning": earning(badges[badge], tier, ""),
            }
            for user, badge, tier in lost[:REPORT_LIMIT]
        ],
        "lost_count": len({(user, badge) for user, badge, _ in lost}),
        "holders": tiers,
        "notified": job.notify,
    }


def push(job: Reevaluation) -> None:
    """Send the job's progress panel to every staff page watching it."""
    html = render_to_string("admin/achievements/reevaluation/progress.html", {"job": job})
    realtime.send_to_group(group(job.pk), [{"type": "reevaluation.progress", "html": html}])
