"""Fuzzing the API: from its own OpenAPI schema against a running server, and with
the shapes of input that have made it fail.

Schemathesis generates valid and invalid requests for every operation and
checks that none gets a 5xx, every status code and response body matches
the schema, and the documented auth is enforced. It runs on SQLite, which
takes text PostgreSQL refuses, so the shapes below also run through the
test client on the database under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.stack import BIN

ID_PATHS = [
    ("/api/v1/events/{}", "event_id"),
    ("/api/v1/users/{}/badges", "user_id"),
    ("/api/v1/users/{}/history", "user_id"),
]
# Ids no event or user can have: each gets a 4xx naming the parameter.
HOSTILE_IDS = [
    "\x00",
    "a\x00b",
    "x" * 129,
    "x" * 100_000,
    "-1",
    "99999999999999999999",
    "__proto__",
    "constructor",
    "..",
    "%",
    "' OR 1=1 --",
    "ünïcødé \u202e\U0001f600",
]


def test_the_api_survives_fuzzing_from_its_own_schema(embedded_site, tmp_path):
    key = _create_key(embedded_site)
    result = subprocess.run(
        [
            str(BIN / "st"),
            "run",
            f"{embedded_site.base_url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "all",
            # A schema cannot say "an event type staff have configured" or "not in
            # the future", so valid-looking requests may rightly be refused (422).
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
            "--seed",
            "20261121",
            "--request-timeout",
            "20",
            "--generation-database",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_COLOR": "1"},
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert "Tested: 6" in result.stdout, summary


def _create_key(site) -> str:
    output = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", f"fuzz-{Path(site.base_url).name}"]
        + ["--producer", "app", "--scope", "events:write", "--scope", "events:read"]
        + ["--scope", "badges:read", "--scope", "badges:write"],
        cwd=Path(__file__).resolve().parents[2],
        env=site.environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return output.strip().splitlines()[-1]


@pytest.mark.parametrize(("path", "field"), ID_PATHS)
@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_a_hostile_id_in_the_path_gets_a_4xx_naming_it(api, path, field, value):
    response = api.get(path.format(quote(value, safe="")))
    assert 400 <= response.status_code < 500
    [error] = response.json()["errors"]
    assert error["field"] == field


@pytest.mark.parametrize(("path", "field"), ID_PATHS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("\x00", "must not contain NUL characters"),
        ("visit-1\x00", "must not contain NUL characters"),
        ("x" * 129, "must be at most 128 characters"),
    ],
)
def test_a_nul_character_or_an_overlong_id_is_a_400(api, path, field, value, problem):
    response = api.get(path.format(quote(value, safe="")))
    assert response.status_code == 400
    assert response.json() == {"errors": [{"field": field, "problem": problem}]}


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"events": ' + "[" * 40 + "]" * 40 + "}",
        json.dumps(
            {
                "event_id": "deep-1",
                "event_type": "visit.created",
                "user_id": "u-1",
                "occurred_at": "2026-01-01T00:00:00Z",
                "payload": json.loads('{"a": ' * 40 + "1" + "}" * 40),
            }
        ),
        '{"a": ' * 100_000,
    ],
    ids=["arrays-100000-deep", "batch-40-deep", "payload-40-deep", "unclosed-100000-deep"],
)
def test_a_body_nested_past_the_limit_is_refused_before_it_is_parsed(api, body):
    response = api.post(body.encode())
    assert response.status_code == 400
    assert response.json() == {
        "errors": [{"field": "body", "problem": "is nested too deeply (more than 32 levels)"}]
    }
