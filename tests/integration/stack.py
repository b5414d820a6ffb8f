"""Start real server processes for the end-to-end tests, and talk to them as a browser would."""

from __future__ import annotations

import os
import re
import shlex
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
    environment.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SECRET_KEY": "integration-test-secret-key",
            # Plain HTTP on loopback: no TLS redirect, no secure-only cookies.
            "SECURE_SSL_REDIRECT": "0",
            "SECURE_COOKIES": "0",
            "SECURE_HSTS_SECONDS": "0",
            "ACCOLADE_API_RATE_LIMIT": "100000/60",
        }
    )
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


def procfile_web_command(port: int) -> list[str]:
    """The Procfile's `web` command, serving on 127.0.0.1:`port`."""
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    )
    words = shlex.split(line.removeprefix("web:"))
    words = words[words.index("python") :]  # after the environment assignments
    words[0] = str(BIN / "python")
    replaced = {"0.0.0.0": "127.0.0.1", "${PORT:-8000}": str(port)}
    command = [replaced.get(word, word) for word in words]
    assert "127.0.0.1" in command and str(port) in command, line
    return command


def procfile_command(name: str, environment: dict[str, str]) -> list[str]:
    """The Procfile's `name` command, its ${VAR:-default}s filled from `environment`."""
    line = next(
        line
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith(f"{name}:")
    )

    def fill(match: re.Match[str]) -> str:
        return environment.get(match.group(1)) or match.group(2)

    words = [
        re.sub(r"\$\{(\w+):-([^}]*)\}", fill, word)
        for word in shlex.split(line.removeprefix(f"{name}:"))
    ]
    words[0] = str(BIN / words[0])
    return words


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

    def __init__(
        self, name: str, base_url: str, processes: list[Process], environment: dict[str, str]
    ):
        self.name = name
        self.base_url = base_url
        self.processes = processes
        self.environment = environment

    def python(self, code: str) -> str:
        """Run Python in the site's Django environment, as another process of the app would."""
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"shell failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-3000:]}" for p in self.processes)


@contextmanager
def embedded_stack(tmp_dir: Path, **overrides: str) -> Iterator[Stack]:
    """`manage.py runserver` alone: SQLite, in-memory layer, evaluation in a thread."""
    environment = base_environment(
        DEBUG="1",
        DATABASE_URL=f"sqlite:///{tmp_dir / 'embedded.sqlite3'}",
        MEDIA_ROOT=str(tmp_dir / "media"),
        **overrides,
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
        yield Stack("embedded", f"http://127.0.0.1:{port}", [server], environment)
    finally:
        server.stop()


PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


class Topology:
    """The production shape, with every part under the test's control.

    PostgreSQL (a fresh database), Redis (the shared server, or a private
    redis-server on its own port that a test may stop and start), Celery
    worker processes, optionally celery beat, and Daphne.
    """

    def __init__(
        self,
        tmp_dir: Path,
        *,
        private_redis: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        require(
            port_open(PG_HOST, PG_PORT),
            "PostgreSQL on 127.0.0.1:5432",
            "Start it (docs/guide.md lists the services) or run with CI=true make test.",
        )
        if private_redis:
            require(
                shutil.which("redis-server") is not None,
                "redis-server",
                "Install it with `apt-get install -y redis-server` (CI does this itself).",
            )
        else:
            require(
                port_open(REDIS_HOST, REDIS_PORT),
                "Redis on 127.0.0.1:6379",
                "Start it (docs/guide.md lists the services) or run with CI=true make test.",
            )
        self.tmp_dir = tmp_dir
        self.database = f"accolade_it_{os.getpid()}_{time.monotonic_ns()}"
        self.redis_port = free_port() if private_redis else REDIS_PORT
        self.redis: Process | None = None
        self.workers: list[Process] = []
        self.processes: list[Process] = []
        self.environment = base_environment(
            DEBUG="0",
            DATABASE_URL=f"postgres://postgres@{PG_HOST}:{PG_PORT}/{self.database}",
            REDIS_URL=f"redis://{REDIS_HOST}:{self.redis_port}",
            # A namespace of our own: a developer's running worker never takes our tasks.
            ACCOLADE_NAMESPACE=self.database.replace("_", "-"),
            ALLOWED_HOSTS="127.0.0.1,localhost",
            MEDIA_ROOT=str(tmp_dir / "media"),
            **(extra_env or {}),
        )
        self.base_url = ""
        self._admin_url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"

    # -- lifecycle ---------------------------------------------------------

    def start(self, *, workers: int = 1, concurrency: int = 2, beat: bool = False) -> Topology:
        import psycopg

        with psycopg.connect(self._admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
        if self.redis_port != REDIS_PORT:
            self.start_redis()
        manage(self.environment, "migrate", "--noinput", "-v0")
        manage(self.environment, "seed_demo", "--quiet-logins")
        for _ in range(workers):
            self.start_worker(concurrency=concurrency)
        if beat:
            self.start_beat()
        self.base_url = self.start_web()
        return self

    def start_web(self, **extra_env: str) -> str:
        """One more Daphne process on a port of its own (with `extra_env` added
        to its environment); its base URL."""
        port = free_port()
        webs = sum(1 for process in self.processes if process.name.startswith("daphne"))
        daphne = self._spawn(
            f"daphne-{webs + 1}" if webs else "daphne",
            # As the Procfile runs it (its arguments, on loopback), with the
            # Procfile's HTTP handler unless told otherwise.
            procfile_web_command(port),
            {
                "WEB_HTTP_HANDLER": self.environment.get("WEB_HTTP_HANDLER") or "one-hop",
                **extra_env,
            },
        )
        wait_for_http(f"http://127.0.0.1:{port}/", daphne)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        import psycopg

        for process in reversed(self.processes):
            process.stop()
        with psycopg.connect(self._admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def as_stack(self) -> Stack:
        return Stack("topology", self.base_url, self.processes, self.environment)

    # -- parts ---------------------------------------------------------------

    def start_worker(self, *, concurrency: int = 2, include: str = "") -> Process:
        number = len(self.workers) + 1
        args = [
            str(BIN / "celery"),
            "-A",
            "project",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(concurrency),
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            f"w{number}-{self.database}@%h",
        ]
        if include:
            args += ["--include", include]
        worker = self._spawn(f"celery-worker-{number}", args)
        worker.wait_for_output(r"ready\.", timeout=90)
        self.workers.append(worker)
        return worker

    def start_procfile(self, name: str, ready: str, **extra_env: str) -> Process:
        """One of the Procfile's processes, as it is written there."""
        command = procfile_command(name, {**self.environment, **extra_env})
        same = sum(1 for process in self.processes if process.name.split("-")[0] == name)
        process = self._spawn(f"{name}-{same + 1}" if same else name, command, extra_env)
        process.wait_for_output(ready, timeout=90)
        return process

    def start_beat(self) -> Process:
        schedule = self.tmp_dir / f"beat-schedule-{time.monotonic_ns()}"
        beat = self._spawn(
            "celery-beat",
            [
                str(BIN / "celery"),
                "-A",
                "project",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(schedule),
            ],
        )
        beat.wait_for_output(r"beat: Starting", timeout=60)
        return beat

    def start_redis(self) -> Process:
        self.redis = self._spawn(
            f"redis-{self.redis_port}",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        deadline = time.monotonic() + 20
        while not port_open(REDIS_HOST, self.redis_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.redis.output()}")
            time.sleep(0.05)
        return self.redis

    def start_nats(self, port: int | None = None) -> Process:
        """A private nats-server with JetStream (its store in the test's directory),
        which a test may stop and start again on the same port and store."""
        require(
            shutil.which("nats-server") is not None,
            "nats-server",
            "Install it with `apt-get install -y nats-server` (CI does this itself).",
        )
        self.nats_port = port or getattr(self, "nats_port", None) or free_port()
        store = self.tmp_dir / "nats-store"
        store.mkdir(exist_ok=True)
        self.nats = self._spawn(
            f"nats-{time.monotonic_ns()}",
            [
                "nats-server",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.nats_port),
                "-js",
                "-sd",
                str(store),
            ],
        )
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", self.nats_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start:\n{self.nats.output()}")
            time.sleep(0.05)
        self.environment["NATS_URL"] = f"nats://127.0.0.1:{self.nats_port}"
        return self.nats

    def stop_nats(self) -> None:
        self.nats.stop()
        self.processes.remove(self.nats)

    def stop_redis(self) -> None:
        assert self.redis is not None, "only a private Redis can be stopped"
        self.redis.stop()
        self.processes.remove(self.redis)
        self.redis = None

    def kill(self, process: Process, *, whole_group: bool = True) -> None:
        """SIGKILL: no cleanup, no acknowledgements, exactly like a crashed host process."""
        if whole_group:
            os.killpg(process.popen.pid, signal.SIGKILL)
        else:
            os.kill(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)

    def kill_pid(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def pool_children(self, worker: Process) -> list[int]:
        """The prefork pool's child processes of a worker."""
        result = subprocess.run(
            ["pgrep", "-P", str(worker.popen.pid)], capture_output=True, text=True
        )
        return [int(pid) for pid in result.stdout.split()]

    # -- data ----------------------------------------------------------------

    def python(self, code: str, timeout: float = 300) -> str:
        """Run Python inside the stack's Django environment (manage.py shell)."""
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"shell failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{self.database}"
        with psycopg.connect(url) as connection:
            return connection.execute(sql, params).fetchall()

    def wait_until(self, sql: str, expected: object, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.query(sql)[0][0]
            if value == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"{sql!r} stayed at {value!r}, expected {expected!r}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-3000:]}" for p in self.processes)

    def _spawn(
        self, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> Process:
        process = Process(name, args, {**self.environment, **(extra_env or {})}, self.tmp_dir)
        self.processes.append(process)
        return process


@contextmanager
def topology_stack(tmp_dir: Path) -> Iterator[Stack]:
    """The production shape: PostgreSQL, Redis, a Celery worker process and Daphne."""
    topology = Topology(tmp_dir)
    try:
        topology.start()
        yield topology.as_stack()
    finally:
        topology.stop()


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
