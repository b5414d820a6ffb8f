"""project.web: Daphne on the event loop WEB_EVENT_LOOP names (uvloop by default),
and the process tuning that only a serving web process applies.

Daphne builds its loop when daphne.server is imported, once per process, so
each case runs in an interpreter of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("handler", ["django", "one-hop"])
def test_the_launcher_serves_pages_and_sockets_on_uvloop(tmp_path, handler):
    """A real Daphne through project.web, with each HTTP handler: pages, the API
    (a POST without a CSRF token, refused for its missing key, not for CSRF),
    and a WebSocket handshake (an anonymous socket is accepted, then closed by
    the consumer) on uvloop."""
    import asyncio

    import websockets
    from websockets.typing import Origin

    from achievements.consumers import CLOSE_NOT_AUTHENTICATED

    environment = base_environment(
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
        ACCOLADE_LOG_LEVEL="WARNING",
        WEB_HTTP_HANDLER=handler,
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
        keyless = httpx.post(f"http://127.0.0.1:{port}/api/v1/events", json={}, timeout=5)
        assert keyless.status_code == 401, keyless.text

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


def test_the_procfile_runs_daphne_through_the_launcher_with_the_one_hop_handler():
    [web] = [
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    ]
    assert web.split()[1:5] == [
        # The measured choice for serving (docs/performance.md), which an operator can override.
        "WEB_HTTP_HANDLER=${WEB_HTTP_HANDLER:-one-hop}",
        "python",
        "-m",
        "project.web",
    ]


# Loaded by Daphne's command line as the application (it imports it after
# daphne.server, so the probe can stand in for the server's run): what the
# process looked like once loaded, and just before Daphne would have served.
TUNING_PROBE = """
import gc
import daphne.server
from daphne.http_protocol import HTTPFactory, WebRequest

def state():
    return [
        gc.get_freeze_count() > 50_000,
        *gc.get_threshold(),
        getattr(WebRequest.__init__, "skips_form_parsing", False),
        getattr(HTTPFactory.log, "skips_discarded_lines", False),
    ]

from project.asgi import application
print("loaded", *state())

def run(self):
    print("serving", *state())

daphne.server.Server.run = run
"""


@pytest.mark.parametrize(
    ("value", "thresholds"), [(None, "5000 10 100"), ("700,10,10", "700 10 10")]
)
def test_the_web_process_is_tuned_once_loaded_and_not_by_importing_the_application(
    tmp_path, value, thresholds
):
    """Importing project.asgi (runserver, tests, another server) changes nothing
    in the process; project.web, once the application is loaded, freezes what
    start-up built, sets the collector's thresholds and switches off Twisted's
    unread work."""
    (tmp_path / "tuning_probe.py").write_text(TUNING_PROBE)
    environment = {
        k: v
        for k, v in base_environment(DEBUG="1").items()
        if k not in {"REDIS_URL", "DATABASE_URL", "WEB_GC_THRESHOLDS"}
    }
    environment["PYTHONPATH"] = str(ROOT)
    if value is not None:
        environment["WEB_GC_THRESHOLDS"] = value
    result = subprocess.run(
        [sys.executable, "-m", "project.web", "-p", "1", "tuning_probe:application"],
        cwd=tmp_path,  # Daphne's command line imports the application from here
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["loaded"] == "False 700 10 10 False False"
    assert lines["serving"] == f"True {thresholds} True True"


def test_daphne_leaves_post_bodies_to_django(monkeypatch):
    """Twisted's form parsing (and its Content-Type parse through `email`) is off
    for Daphne's requests once the process is tuned; the body itself is
    still read and handed on whole."""
    from types import SimpleNamespace

    from daphne.http_protocol import WebRequest
    from twisted.web import http
    from twisted.web.test.requesthelper import DummyChannel

    from project.twisted_tuning import skip_form_parsing

    monkeypatch.setattr(WebRequest, "__init__", WebRequest.__init__)  # put back afterwards
    assert skip_form_parsing()
    patched = WebRequest.__init__
    assert getattr(patched, "skips_form_parsing", False)
    assert skip_form_parsing() and WebRequest.__init__ is patched  # once
    parsed: list[bytes] = []

    def parse(line: bytes) -> bytes:
        parsed.append(line)
        return b""

    monkeypatch.setattr(http, "_parseContentType", parse)
    channel: Any = DummyChannel()
    channel.factory = SimpleNamespace(server=SimpleNamespace(protocol_connected=lambda r: None))
    request = WebRequest(channel)
    monkeypatch.setattr(request, "process", lambda: None)
    body = b"name=value&other=1"
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])
    request.gotLength(len(body))
    request.handleContentChunk(body)
    request.requestReceived(b"POST", b"/form", b"HTTP/1.1")
    assert parsed == [] and request.args == {}
    request.content.seek(0)
    assert request.content.read() == body


@pytest.mark.parametrize(("verbosity", "kept"), [(0, False), (1, False), (2, True), (3, True)])
def test_twisted_access_line_is_built_only_where_daphne_keeps_twisted_log(
    monkeypatch, verbosity, kept
):
    """At verbosity 0 and 1 Daphne sends Twisted's log nowhere (and writes its
    own access log), so Twisted's line for each request is not built."""
    import io
    from types import SimpleNamespace

    from daphne.http_protocol import HTTPFactory

    from project.twisted_tuning import skip_discarded_access_log

    monkeypatch.setattr(HTTPFactory, "log", HTTPFactory.log)  # put back afterwards
    assert skip_discarded_access_log()
    patched = HTTPFactory.log
    assert getattr(patched, "skips_discarded_lines", False)
    assert skip_discarded_access_log() and HTTPFactory.log is patched  # once
    factory = HTTPFactory(SimpleNamespace(verbosity=verbosity))
    formatted: list[object] = []

    def formatter(timestamp: str, request: object) -> str:
        formatted.append(request)
        return "a line"

    factory._logFormatter = formatter
    factory._logFile = log_file = io.StringIO()
    request = object()
    factory.log(request)
    assert formatted == ([request] if kept else [])
    assert log_file.getvalue() == ("a line\n" if kept else "")
