"""Property-based fuzzing of the API from its own OpenAPI schema, against a running server.

Schemathesis generates valid and invalid requests for every operation and
checks that none gets a 5xx, every status code and response body matches
the schema, and the documented auth is enforced.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.stack import BIN


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
    assert "Tested: 3" in result.stdout, summary


def _create_key(site) -> str:
    output = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", f"fuzz-{Path(site.base_url).name}"]
        + ["--producer", "app", "--scope", "events:write", "--scope", "events:read"]
        + ["--scope", "badges:read"],
        cwd=Path(__file__).resolve().parents[2],
        env=site.environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return output.strip().splitlines()[-1]
