"""project.web: Daphne on the event loop WEB_EVENT_LOOP names (uvloop by default).

Daphne builds its loop when daphne.server is imported, once per process, so
each case runs in an interpreter of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.stack import Process, base_environment, free_port, manage, wait_for_http

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


DAPHNES_LOOP = """
from project.web import configure_event_loop
print(configure_event_loop({choice!r}))
import daphne.server
loop = daphne.server.twisted_loop
print(type(loop).__module__, type(loop).__name__)
"""


@pytest.mark.parametrize(
    ("choice", "running", "module"),
    [
        ("auto", "uvloop", "uvloop"),
        ("uvloop", "uvloop", "uvloop"),
        ("asyncio", "asyncio", "asyncio"),
    ],
)
def test_daphnes_loop_is_the_one_chosen(choice, running, module):
    result = _python(DAPHNES_LOOP.format(choice=choice))
    assert result.returncode == 0, result.stderr
    said, built = result.stdout.split("\n")[:2]
    assert said == running
    assert built.split()[0].split(".")[0] == module


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused():
    blocked = "import sys; sys.modules['uvloop'] = None\n"  # as where it is not installed
    auto = _python(blocked + DAPHNES_LOOP.format(choice="auto"))
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.split("\n")[0] == "asyncio"
    insisted = _python(blocked + DAPHNES_LOOP.format(choice="uvloop"))
    assert insisted.returncode != 0
    assert "WEB_EVENT_LOOP: uvloop is not installed here" in insisted.stderr


def test_the_choice_must_come_before_daphne_builds_its_loop():
    result = _python("import daphne.server\n" + DAPHNES_LOOP.format(choice="auto"))
    assert result.returncode != 0
    assert "daphne.server is imported already" in result.stderr


@pytest.mark.parametrize("value", ["fast", "UVLOOP", "uv loop"])
def test_a_bad_setting_stops_the_server_naming_it(value):
    result = subprocess.run(
        [sys.executable, "-m", "project.web", "-p", "1", "project.asgi:application"],
        cwd=ROOT,
        env={**os.environ, "WEB_EVENT_LOOP": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"WEB_EVENT_LOOP: must be one of auto, uvloop, asyncio, not {value!r}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_launcher_serves_pages_and_sockets_on_uvloop(tmp_path):
    """A real Daphne through project.web: HTTP, and a WebSocket handshake (an
    anonymous socket is accepted, then closed by the consumer) on uvloop."""
    import asyncio

    import websockets
    from websockets.typing import Origin

    from achievements.consumers import CLOSE_NOT_AUTHENTICATED

    environment = base_environment(
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}", ACCOLADE_LOG_LEVEL="WARNING"
    )
    manage(environment, "migrate", "--noinput", "-v0")
    port = free_port()
    server = Process(
        "web",
        [sys.executable, "-m", "project.web", "-b", "127.0.0.1", "-p", str(port)]
        + ["project.asgi:application"],
        environment,
        tmp_path,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", server)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=5).status_code == 200

        async def handshake() -> int | None:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws/live/", origin=Origin(f"http://127.0.0.1:{port}")
            ) as socket:
                try:
                    await asyncio.wait_for(socket.recv(), 5)
                except websockets.ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else None
            return None

        assert asyncio.run(handshake()) == CLOSE_NOT_AUTHENTICATED
        assert "project.web: Daphne on the uvloop event loop" in server.output()
    finally:
        server.stop()


def test_the_procfile_runs_daphne_through_the_launcher():
    [web] = [
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    ]
    assert web.split()[1:4] == ["python", "-m", "project.web"]
