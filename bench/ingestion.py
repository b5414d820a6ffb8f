"""Ingestion: events accepted durably through `POST /api/v1/events`, single and in batches.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1):

    .venv/bin/python bench/ingestion.py [--clients 32] [--requests 3000]

It starts the production topology (a scratch PostgreSQL database, Redis, one
Daphne process; no worker, so nothing competes with ingestion) and posts
from --clients concurrent HTTP clients: --requests single-event requests,
then --requests / 10 requests of 100 events each. An event counts once its
request has answered 202 (the rows are committed by then). Prints requests/s
and events/s for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETUP = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from achievements.models import Badge, BadgeRequirement, ExternalIdentity
from api.models import ApiKey
badge = Badge.objects.create(key="ingest", name="Ingest")
BadgeRequirement.objects.create(badge=badge, event_type="bench.ingest", threshold=10**9)
User = get_user_model()
User.objects.bulk_create([User(username=f"in-{n}", password="!") for n in range(100)])
for user in User.objects.filter(username__startswith="in-"):
    ExternalIdentity.objects.create(external_id=user.username, user=user, linked_at=timezone.now())
print(ApiKey.issue("ingestion-bench")[1])
"""


async def post_all(base: str, key: str, clients: int, bodies: list[dict]) -> tuple[float, int]:
    import httpx

    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post(
                    "/api/v1/events", headers={"Authorization": f"Bearer {key}"}, json=body
                )
                if response.status_code == 202:
                    results = response.json().get("results", [{}])
                    accepted += sum(r.get("status") == "accepted" for r in results) or 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.monotonic() - started, accepted


def event(n: int, prefix: str) -> dict:
    return {
        "event_id": f"{prefix}-{n}",
        "user_id": f"in-{n % 100}",
        "event_type": "bench.ingest",
        "occurred_at": datetime.now(UTC).isoformat(),
        "payload": {"n": n},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    from tests.integration.stack import Topology

    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(Path(tmp), extra_env={"ACCOLADE_LOG_LEVEL": "WARNING"})
        try:
            topology.start(workers=0)
            key = topology.python(SETUP).strip().splitlines()[-1]
            base = topology.base_url
            singles = [event(n, "single") for n in range(args.requests)]
            seconds, accepted = asyncio.run(post_all(base, key, args.clients, singles))
            single = {
                "requests_per_s": args.requests / seconds,
                "events_per_s": accepted / seconds,
            }
            batches = [
                {"events": [event(b * 100 + n, "batch") for n in range(100)]}
                for b in range(args.requests // 10)
            ]
            seconds, accepted = asyncio.run(post_all(base, key, args.clients, batches))
            batch = {"requests_per_s": len(batches) / seconds, "events_per_s": accepted / seconds}
            [(stored,)] = topology.query("SELECT count(*) FROM achievements_event")
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()
    print(f"ingestion through POST /api/v1/events, {args.clients} concurrent clients")
    print(
        f"  single events     {single['requests_per_s']:8.0f} requests/s "
        f"{single['events_per_s']:8.0f} events/s"
    )
    print(
        f"  batches of 100    {batch['requests_per_s']:8.0f} requests/s "
        f"{batch['events_per_s']:8.0f} events/s"
    )
    print(f"  events stored     {stored:8d}")
    out = ROOT / "bench" / "results-ingestion.json"
    out.write_text(
        json.dumps(
            {
                "clients": args.clients,
                "single": {k: round(v, 1) for k, v in single.items()},
                "batches_of_100": {k: round(v, 1) for k, v in batch.items()},
                "events_stored": stored,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()
