"""One HTTP request through an ASGI application, as a server would send it."""

from __future__ import annotations

from typing import Any

from asgiref.testing import ApplicationCommunicator


def http_scope(
    path: str, *, method: str = "GET", root_path: str = "", json_body: bool = False
) -> dict[str, Any]:
    headers = [(b"host", b"testserver")]
    if json_body:
        headers.append((b"content-type", b"application/json"))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def exchange(application: Any, scope: dict[str, Any], body: bytes = b"") -> list[dict]:
    """Send the request; the messages the application sends back, to the body's end."""
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    messages = [await communicator.receive_output(timeout=10)]
    while messages[-1]["type"] == "http.response.start" or messages[-1].get("more_body"):
        messages.append(await communicator.receive_output(timeout=10))
    await communicator.wait(timeout=10)
    return messages
