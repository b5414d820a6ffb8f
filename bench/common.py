"""What the benchmark scripts share: results files, the script entry, waiting for quiet."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.collect import machine

ROOT = Path(__file__).resolve().parents[1]


def write_results(name: str, data: dict[str, Any]) -> Path:
    """bench/results-<name>.json, which bench/collect.py gathers, with the machine
    it ran on (scripts run at different times, on different machines)."""
    out = ROOT / "bench" / f"results-{name}.json"
    out.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return out


def run_script(main: Callable[[], None]) -> None:
    """Run a script's main from the project root, printing each line as it comes."""
    os.chdir(ROOT)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()


def settle(topology: Any, sql: str) -> list:
    """The query's rows once they stop changing: the requests a load generator
    left in flight are done."""
    rows = topology.query(sql)
    for _ in range(100):
        time.sleep(0.5)
        now = topology.query(sql)
        if now == rows:
            break
        rows = now
    return rows


def hold_still() -> None:
    """Keep this measuring process's own garbage collector out of the figures.

    A client holding thousands of sockets, with Python's default collector,
    stopped for full collections of up to 330 ms in the middle of a run
    (a gc callback in bench/latency.py's client), and every frame arriving
    meanwhile was stamped late. Called once the sockets are open: what exists
    is frozen, and nothing is collected until the process ends (a run lasts
    seconds; reference counting frees the rest).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.disable()


async def open_live_socket(base: str, session: str) -> Any:
    """A signed-in live socket to the site at `base`, retried: a busy server may
    drop a handshake."""
    import asyncio

    import websockets
    from websockets.typing import Origin

    for attempt in range(5):
        try:
            return await websockets.connect(
                f"ws://{base.removeprefix('http://')}/ws/live/",
                additional_headers={"Cookie": f"sessionid={session}"},
                origin=Origin(base),
                open_timeout=60,
                ping_interval=None,
                max_queue=None,
            )
        except Exception:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")
