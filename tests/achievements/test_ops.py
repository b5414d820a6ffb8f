"""/healthz and /metrics in the embedded mode (the topology's are in tests/integration)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from achievements import metrics
from achievements.engine import evaluate_event
from achievements.events import record_event, record_external_event
from achievements.models import Event
from tests.factories import make_images_badge, make_user


@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.reset_for_tests()
    yield
    metrics.reset_for_tests()


def value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} missing from:\n{text}"
    return float(match.group(1))


def test_healthz_answers_without_signing_in(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "database": "ok",
            "redis": "not used (embedded mode)",
            "workers": "in-process (embedded mode)",
        },
    }


def test_metrics_are_not_public(client, owner):
    response = client.get("/metrics")
    assert response.status_code == 401 and "Bearer" in response["WWW-Authenticate"]
    client.force_login(owner)  # signed in, but not staff
    assert client.get("/metrics").status_code == 401


def test_metrics_count_the_pipeline_in_prometheus_format(
    client, owner, django_capture_on_commit_callbacks
):
    from api.models import ApiKey

    make_images_badge(threshold=2)
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(3):
            record_event(owner, "image.posted", event_id=f"img-{n}")  # evaluated on commit
        record_event(owner, "image.posted", event_id="img-0")  # a retry: a duplicate
        # For a producer's user nobody has linked yet: recorded, waiting.
        record_external_event("ghost-1", "image.posted", event_id="img-9")
    assert evaluate_event(Event.objects.get(event_id="img-0").pk) is None  # already done
    _, key = ApiKey.issue("prometheus", scopes=["metrics:read"])
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert value(text, "accolade_events_received_total") == 4
    assert value(text, "accolade_events_deduplicated_total") == 1
    assert value(text, "accolade_events_processed_total") == 3
    assert value(text, "accolade_unlocks_total") == 1
    assert value(text, "accolade_events_pending") == 1
    assert value(text, "accolade_events_dead_lettered") == 0
    assert value(text, "accolade_evaluation_seconds_count") == 3
    assert value(text, 'accolade_evaluation_seconds_bucket{le="+Inf"}') == 3
    assert "# TYPE accolade_unlock_latency_seconds histogram" in text
    # Buckets are cumulative and never decrease.
    buckets = [
        float(n)
        for n in re.findall(
            r'^accolade_evaluation_seconds_bucket\{le="[^"]+"\} (\S+)$', text, re.M
        )
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3

    staff = make_user(username="ops", is_staff=True)
    client.force_login(staff)
    assert client.get("/metrics").status_code == 401  # staff, but without the permission
    staff.user_permissions.add(Permission.objects.get(codename="view_metrics"))
    client.force_login(get_user_model().objects.get(pk=staff.pk))  # permissions are cached
    assert client.get("/metrics").status_code == 200


def test_a_histogram_observation_lands_in_the_first_bucket_it_fits():
    metrics.observe("accolade_unlock_latency_seconds", [0.02, 0.02, 7.0, 99.0])
    values = metrics._read()
    assert values["accolade_unlock_latency_seconds_bucket:0.025"] == 2
    assert values["accolade_unlock_latency_seconds_bucket:10"] == 1
    assert values["accolade_unlock_latency_seconds_bucket:+Inf"] == 1
    assert values["accolade_unlock_latency_seconds_sum"] == pytest.approx(106.04)


def test_gathered_metrics_are_recorded_at_the_end_of_the_outermost_block_even_on_error():
    with pytest.raises(RuntimeError), metrics.gathered():
        metrics.incr("accolade_unlocks_total", 2)
        with metrics.gathered():
            metrics.observe("accolade_unlock_latency_seconds", [0.02])
        assert metrics._read() == {}  # nothing sent yet
        raise RuntimeError("the batch failed")
    values = metrics._read()
    assert values["accolade_unlocks_total"] == 2
    assert values["accolade_unlock_latency_seconds_count"] == 1
    metrics.incr("accolade_unlocks_total")  # outside a block: at once
    assert metrics._read()["accolade_unlocks_total"] == 3


def test_healthz_answers_head_probes(client, db):
    assert client.head("/healthz").status_code == 200
