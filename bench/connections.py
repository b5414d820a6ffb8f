"""Idle WebSocket connections one Daphne process holds, their memory, and a broadcast.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1):

    .venv/bin/python bench/connections.py [--sockets 10000] [--users 1000]

It starts the production topology (a scratch PostgreSQL database, Redis, one
Daphne process; no worker is needed), signs in --users users (a session
each), and opens --sockets live sockets to `/ws/live/` spread over them, as
open tabs would: each is authenticated from its session cookie, joins its
user's group, registers its presence and reads its catch-up, like a page.

It reports Daphne's resident memory before and after, per connection, and
then sends one message to every user's group through the channel layer
(what a worker does after an evaluation) and times until every socket has
its frame. Frames that never arrive are counted: they are channel-layer
capacity drops or lost sends. The clients run in a process of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import hold_still, open_live_socket, run_script, write_results  # noqa: E402

SESSIONS = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
User = get_user_model()
User.objects.bulk_create([User(username=f"tab-{{n}}", password="!") for n in range({users})])
keys = []
for user in User.objects.filter(username__startswith="tab-").order_by("pk"):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys.append([user.pk, session.session_key])
print(json.dumps(keys))
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def clients(
    base: str, tabs: list[tuple[int, str]], ready: Any, go: Any, results: Any, marker: str
) -> None:
    """The browser side, in its own process: open every socket, then time the broadcast."""

    async def main() -> None:
        arrived: dict[int, float] = {}
        sockets = []
        limit = asyncio.Semaphore(200)

        async def open_one(index: int, session: str) -> None:
            async with limit:
                sockets.append((index, await open_live_socket(base, session)))

        async def listen(index: int, socket: Any) -> None:
            async for frame in socket:
                if marker in frame and index not in arrived:
                    arrived[index] = time.time()

        started = time.monotonic()
        await asyncio.gather(*(open_one(i, key) for i, (_, key) in enumerate(tabs)))
        opened = time.monotonic() - started
        listeners = [asyncio.create_task(listen(i, s)) for i, s in sockets]
        hold_still()
        ready.put({"opened": len(sockets), "seconds": opened})
        sent_at = await asyncio.get_running_loop().run_in_executor(None, go.get)
        deadline = time.time() + 30
        while len(arrived) < len(sockets) and time.time() < deadline:
            await asyncio.sleep(0.05)
        last = max(arrived.values()) if arrived else sent_at
        results.put({"received": len(arrived), "seconds": last - sent_at})
        for task in listeners:
            task.cancel()
        await asyncio.gather(*(s.close() for _, s in sockets), return_exceptions=True)

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument(
        "--layer", choices=["core", "pubsub"], default="pubsub", help="the CHANNEL_LAYER setting"
    )
    args = parser.parse_args()
    if args.users < 1 or args.sockets < args.users:
        parser.error("need --users >= 1 and --sockets >= --users")
    result = run(args.sockets, args.users, args.layer)
    report(result, args)


def run(sockets: int, users: int, layer: str = "core") -> dict[str, Any]:
    from tests.integration.stack import Topology

    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(
            Path(tmp),
            extra_env={
                "ACCOLADE_LOG_LEVEL": "WARNING",
                # One Daphne's sockets are fed through one channel (the socket
                # hub); a broadcast puts one message per user in it at once.
                "CHANNEL_LAYER_CAPACITY": str(max(1500, 2 * sockets)),
                "CHANNEL_LAYER": layer,
            },
        )
        try:
            topology.start(workers=0)
            [daphne] = [p for p in topology.processes if p.name == "daphne"]
            pid = daphne.popen.pid
            keys = json.loads(
                topology.python(SESSIONS.format(users=users)).strip().splitlines()[-1]
            )
            tabs = [tuple(keys[n % len(keys)]) for n in range(sockets)]
            idle = rss_kb(pid)
            marker = f"bench-broadcast-{time.monotonic_ns()}"
            context = multiprocessing.get_context("spawn")
            ready, go, results = context.Queue(), context.Queue(), context.Queue()
            client = context.Process(
                target=clients, args=(topology.base_url, tabs, ready, go, results, marker)
            )
            client.start()
            opened = ready.get(timeout=900)
            time.sleep(3)  # let the connect work settle
            loaded = rss_kb(pid)
            sent_at, send_seconds = broadcast(topology, sorted({u for u, _ in tabs}), marker)
            go.put(sent_at)
            delivered = results.get(timeout=120)
            client.join(timeout=60)
            return {
                "sockets": opened["opened"],
                "connect_seconds": round(opened["seconds"], 1),
                "rss_idle_kb": idle,
                "rss_loaded_kb": loaded,
                "kb_per_socket": round((loaded - idle) / max(opened["opened"], 1), 1),
                "broadcast_groups": len({u for u, _ in tabs}),
                "broadcast_send_seconds": round(send_seconds, 3),
                "broadcast_seconds": round(delivered["seconds"], 3),
                "frames_received": delivered["received"],
                "frames_lost": opened["opened"] - delivered["received"],
            }
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()


def broadcast(topology: Any, user_ids: list[int], marker: str) -> tuple[float, float]:
    """Send one message to every user's group, as workers do; (wall time sent, seconds)."""
    os.environ.update(topology.environment)
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    import django

    django.setup()
    from channels.layers import get_channel_layer

    from achievements.cards import cards_for_user
    from achievements.frames import render_frame
    from achievements.realtime import user_group

    layer = get_channel_layer()
    # A real card as a worker renders it, renamed so the client can spot its frame.
    card = {**cards_for_user(user_ids[0])[0], "name": marker}
    # Rendered once by the sender, as realtime.notify_badge_changes does.
    message = {
        "type": "badges.changed",
        "cards": [card],
        "toasts": [],
        "html": render_frame([card], []),
    }

    async def send_all() -> float:
        started = time.monotonic()
        # Each message names its group, as realtime's senders stamp it: the web
        # process's hub hands it to that group's sockets.
        await asyncio.gather(
            *(
                layer.group_send(user_group(u), {**message, "group": user_group(u)})
                for u in user_ids
            )
        )
        return time.monotonic() - started

    sent_at = time.time()
    seconds = asyncio.run(send_all())
    return sent_at, seconds


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"connections: {result['sockets']:,} idle sockets to one Daphne process "
        f"({args.layer} channel layer)"
    )
    print(f"  opened in                     {result['connect_seconds']:8.1f} s")
    print(
        f"  Daphne memory idle / loaded   {result['rss_idle_kb'] / 1024:8.0f} / "
        f"{result['rss_loaded_kb'] / 1024:.0f} MB"
    )
    print(f"  memory per socket             {result['kb_per_socket']:8.1f} KB")
    print(
        f"  one message to every socket   {result['broadcast_seconds']:8.2f} s "
        f"({result['broadcast_groups']:,} groups, sends took "
        f"{result['broadcast_send_seconds']:.2f} s)"
    )
    print(f"  frames lost                   {result['frames_lost']:8d}")
    summary = {"sockets_requested": args.sockets, "layer": args.layer, **result}
    write_results("connections", summary)


if __name__ == "__main__":
    run_script(main)
