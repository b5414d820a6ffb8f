"""Start real server processes for the end-to-end tests, and talk to them as a browser would."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO_PASSWORD = "accolade-demo"
ON_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"


def require(available: bool, what: str, how: str) -> None:
    """Skip when a service is missing on a developer machine; on CI that is a failure."""
    if available:
        return
    message = f"{what} is not available. {how}"
    if ON_CI:
        pytest.fail(f"{message} (CI=true: these tests must run, not skip)")
    pytest.skip(message)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environment(**overrides: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL", "DEBUG"}
    }
    environment.update({"PYTHONUNBUFFERED": "1", "SECRET_KEY": "integration-test-secret-key"})
    environment.update(overrides)
    return environment


def manage(environment: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


class Process:
    """A child process whose output goes to a log file we can search and show on failure."""

    def __init__(self, name: str, args: list[str], environment: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output()):
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not print {pattern!r}:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self.log.close()


def wait_for_http(url: str, process: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} never answered {url}:\n{process.output()[-4000:]}")


class Stack:
    """A running site: its base URL and the processes behind it."""

    def __init__(self, name: str, base_url: str, processes: list[Process]):
        self.name = name
        self.base_url = base_url
        self.processes = processes

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-3000:]}" for p in self.processes)


@contextmanager
def embedded_stack(tmp_dir: Path) -> Iterator[Stack]:
    """`manage.py runserver` alone: SQLite, in-memory layer, evaluation in a thread."""
    environment = base_environment(
        DEBUG="1",
        DATABASE_URL=f"sqlite:///{tmp_dir / 'embedded.sqlite3'}",
        MEDIA_ROOT=str(tmp_dir / "media"),
    )
    manage(environment, "migrate", "--noinput", "-v0")
    manage(environment, "seed_demo", "--quiet-logins")
    port = free_port()
    server = Process(
        "runserver",
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        environment,
        tmp_dir,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server)
        yield Stack("embedded", f"http://127.0.0.1:{port}", [server])
    finally:
        server.stop()


PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@contextmanager
def topology_stack(tmp_dir: Path) -> Iterator[Stack]:
    """The production shape: PostgreSQL, Redis, a Celery worker process and Daphne."""
    require(
        port_open(PG_HOST, PG_PORT),
        "PostgreSQL on 127.0.0.1:5432",
        "Start it (see README, 'Running the tests') or run with CI=true make test.",
    )
    require(
        port_open(REDIS_HOST, REDIS_PORT),
        "Redis on 127.0.0.1:6379",
        "Start it (see README, 'Running the tests') or run with CI=true make test.",
    )
    import psycopg

    database = f"accolade_it_{os.getpid()}_{int(time.time())}"
    admin_url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    environment = base_environment(
        DEBUG="0",
        DATABASE_URL=f"postgres://postgres@{PG_HOST}:{PG_PORT}/{database}",
        REDIS_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}",
        # A namespace of our own: a developer's running worker never takes our tasks.
        ACCOLADE_NAMESPACE=database.replace("_", "-"),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        MEDIA_ROOT=str(tmp_dir / "media"),
    )
    processes: list[Process] = []
    try:
        manage(environment, "migrate", "--noinput", "-v0")
        manage(environment, "seed_demo", "--quiet-logins")
        worker = Process(
            "celery-worker",
            [
                str(BIN / "celery"),
                "-A",
                "project",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--without-mingle",
                "--without-gossip",
                "--hostname",
                f"{database}@%h",
            ],
            environment,
            tmp_dir,
        )
        processes.append(worker)
        port = free_port()
        daphne = Process(
            "daphne",
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"],
            environment,
            tmp_dir,
        )
        processes.append(daphne)
        worker.wait_for_output(r"ready\.", timeout=90)
        wait_for_http(f"http://127.0.0.1:{port}/", daphne)
        yield Stack("topology", f"http://127.0.0.1:{port}", processes)
    finally:
        for process in processes:
            process.stop()
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


class SignedInClient:
    """An HTTP client signed in through the real log-in form, cookies and CSRF included."""

    def __init__(self, base_url: str, username: str):
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=10)
        self.http.get("/accounts/login/")
        response = self.http.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": DEMO_PASSWORD,
                "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302, response.text[:500]

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    def place_ids(self) -> list[str]:
        return re.findall(r'<option value="(\d+)"', self.http.get("/places/").text)

    def log_visit(self, place_id: str) -> httpx.Response:
        response = self.http.post(
            "/places/",
            data={"place": place_id},
            headers={"X-CSRFToken": self.http.cookies["csrftoken"], "HX-Request": "true"},
        )
        assert response.status_code == 200, response.text[:500]
        return response

    def close(self) -> None:
        self.http.close()
