"""A server of the test's own on a free loopback port (Starlette under uvicorn, in a thread),
and the contract's answers it gives: for the clients' tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------------------- test servers


@contextmanager
def serve(handler: Handler) -> Iterator[str]:
    """Serve `handler` for every path and method on a free loopback port; yield the base URL."""
    app = Starlette(routes=[Route("/{path:path}", handler, methods=["GET", "POST"])])
    # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says so, else every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form (Starlette's request.form() needs python-multipart, not installed)."""
    return dict(parse_qsl((await request.body()).decode()))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


def error(status: int, code: str, message: str = "nope", **headers: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)
