"""Security on the production topology: Daphne through project.web, PostgreSQL, Redis.

Two web processes: one trusting no proxy (the default) and one trusting
127.0.0.1, as it would behind a proxy on the same host.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.integration.stack import DEMO_PASSWORD, SignedInClient, Topology

pytestmark = pytest.mark.topology


class SecuritySite:
    def __init__(self, topology: Topology, proxied_url: str) -> None:
        self.topology = topology
        self.base_url = topology.base_url  # trusts no proxy
        self.proxied_url = proxied_url  # trusts 127.0.0.1
        self.query = topology.query


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    topology = Topology(
        tmp_path_factory.mktemp("security"),
        extra_env={"LOGIN_FAILURE_LIMIT": "10", "SOCKETS_PER_SESSION": "3"},
    )
    try:
        topology.start(workers=1)
        yield SecuritySite(topology, topology.start_web(TRUSTED_PROXIES="127.0.0.1"))
    finally:
        topology.stop()


def _log_in(base_url: str, username: str, password: str, **headers: str) -> int:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        http.get("/accounts/login/")
        response = http.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": http.cookies["csrftoken"],
            },
            headers=headers,
        )
        return response.status_code


@pytest.fixture
def no_attempts(site):
    site.query("DELETE FROM axes_accessattempt RETURNING id")


def test_forged_forwarded_addresses_do_not_escape_the_lock_out(site, no_attempts):
    """The hole this closes: Daphne's --proxy-headers believed any X-Forwarded-For."""
    statuses = [
        _log_in(site.base_url, "alice", "wrong", **{"X-Forwarded-For": f"10.9.{n}.1, 127.0.0.1"})
        for n in range(30)
    ]
    assert statuses[:9] == [200] * 9 and set(statuses[9:]) == {429}, statuses
    assert _log_in(site.base_url, "alice", DEMO_PASSWORD) == 429
    rows = site.query(
        "SELECT DISTINCT host(ip_address) FROM axes_accessattempt WHERE username = 'alice'"
    )
    assert rows == [("127.0.0.1",)]


def test_behind_a_trusted_proxy_each_client_is_counted_and_the_account_still_locks(
    site, no_attempts
):
    known = SignedInClient(site.proxied_url, "bob")  # bob's own browser, logged in before
    statuses = [
        _log_in(site.proxied_url, "bob", "wrong", **{"X-Forwarded-For": f"10.8.{n}.1"})
        for n in range(12)
    ]
    assert statuses[:9] == [200] * 9 and set(statuses[9:]) == {429}, statuses
    rows = site.query(
        "SELECT COUNT(DISTINCT ip_address) FROM axes_accessattempt WHERE username = 'bob'"
    )
    assert rows == [(10,)]  # one per forwarded client; refused attempts are not counted
    assert (
        _log_in(site.proxied_url, "bob", DEMO_PASSWORD, **{"X-Forwarded-For": "10.7.0.1"}) == 429
    )
    # The owner's browser is not locked out by guesses from elsewhere.
    http = known.http
    http.post("/accounts/logout/", headers={"X-CSRFToken": http.cookies["csrftoken"]})
    http.get("/accounts/login/")
    response = http.post(
        "/accounts/login/",
        data={
            "username": "bob",
            "password": DEMO_PASSWORD,
            "csrfmiddlewaretoken": http.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302
    known.close()


@pytest.fixture
def sign_in(site, no_attempts):
    """Signed-in HTTP clients of the site that trusts no proxy, closed after the test."""
    clients: list[SignedInClient] = []

    def make(username: str) -> SignedInClient:
        clients.append(SignedInClient(site.base_url, username))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _socket_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws/live/"


async def _close_code(ws: websockets.ClientConnection, timeout: float = 5) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout=timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_logging_out_closes_the_sessions_open_socket_at_once(site, sign_in):
    client = sign_in("alice")

    async def scenario() -> None:
        headers = {"Cookie": client.cookie_header, "Origin": site.base_url}
        async with websockets.connect(
            _socket_url(site.base_url), additional_headers=headers
        ) as ws:
            await asyncio.sleep(0.5)
            assert ws.close_code is None  # open (any catch-up frame aside)
            logout = asyncio.to_thread(
                client.http.post,
                "/accounts/logout/",
                headers={"X-CSRFToken": client.http.cookies["csrftoken"]},
            )
            await logout
            assert await _close_code(ws, timeout=3) == 4401

    asyncio.run(scenario())


def test_a_password_change_closes_the_users_other_sockets(site, sign_in):
    client = sign_in("bob")

    async def scenario() -> None:
        headers = {"Cookie": client.cookie_header, "Origin": site.base_url}
        async with websockets.connect(
            _socket_url(site.base_url), additional_headers=headers
        ) as ws:
            await asyncio.to_thread(
                site.topology.python,
                "from django.contrib.auth import get_user_model\n"
                "u = get_user_model().objects.get(username='bob')\n"
                "u.set_password('another-passphrase-1'); u.save()\n",
            )
            # Reconnect, and be told: this session no longer signs anyone in.
            assert await _close_code(ws, timeout=3) == 4000
        async with websockets.connect(
            _socket_url(site.base_url), additional_headers=headers
        ) as ws:
            assert await _close_code(ws, timeout=3) == 4401

    try:
        asyncio.run(scenario())
    finally:
        site.topology.python(
            "from django.contrib.auth import get_user_model\n"
            "u = get_user_model().objects.get(username='bob')\n"
            f"u.set_password({DEMO_PASSWORD!r}); u.save()\n"
        )


def test_a_socket_from_another_port_of_this_host_is_refused(site, sign_in):
    client = sign_in("alice")
    other_port = site.base_url.rsplit(":", 1)[0] + ":1"

    async def scenario() -> None:
        headers = {"Cookie": client.cookie_header, "Origin": other_port}
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(_socket_url(site.base_url), additional_headers=headers):
                pass

    asyncio.run(scenario())


def test_one_session_gets_only_so_many_sockets(site, sign_in):
    client = sign_in("alice")

    async def scenario() -> None:
        headers = {"Cookie": client.cookie_header, "Origin": site.base_url}
        url = _socket_url(site.base_url)
        kept = [await websockets.connect(url, additional_headers=headers) for _ in range(3)]
        async with websockets.connect(url, additional_headers=headers) as fourth:
            assert await _close_code(fourth) == 4429
        for ws in kept:
            assert ws.close_code is None  # still open
            await ws.close()

    asyncio.run(scenario())
