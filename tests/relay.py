"""A hostile server of the tests' own: an HTTP/1.1 relay in front of a sandbox API that keeps
the protocol but may break the contract's promises.

Every request goes to `respond(exchange)`, which may answer it itself (a never-ending list, a
gzip bomb), or forward it to the sandbox with `exchange.forward()` and answer with what came
back, changed or not. `respond` returning None forwards the request unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import httpx


@dataclass
class Reply:
    """What the relay answers: a status, headers and a body (bytes, or chunks written one
    after another with Transfer-Encoding: chunked)."""

    status: int
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass
class Exchange:
    """One request the relay received."""

    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    _upstream: str
    _target: str

    def forward(self) -> httpx.Response:
        """Send the request to the sandbox, as it came, and return its answer."""
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
        }
        return httpx.request(
            self.method, self._upstream + self._target, headers=headers, content=self.body,
            timeout=30,
        )  # fmt: skip


def relayed(answer: httpx.Response) -> Reply:
    """The sandbox's answer, as the relay passes it on."""
    headers = {k: answer.headers[k] for k in ("Content-Type", "Retry-After") if k in answer.headers}
    return Reply(answer.status_code, answer.content, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up on a body it will not read (a bomb) is no error here."""


class Relay:
    """`with Relay(upstream, respond) as relay:` serves on `relay.url` until the block ends."""

    def __init__(self, upstream: str, respond: Callable[[Exchange], Reply | None]) -> None:
        self.exchanges: list[Exchange] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                exchange = Exchange(
                    self.command,
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                    upstream,
                    self.path,
                )
                relay.exchanges.append(exchange)
                reply = respond(exchange) or relayed(exchange.forward())
                try:
                    self._write(reply)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on it
                    self.close_connection = True

            def _write(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if isinstance(reply.body, bytes):
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in reply.body:
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = _any

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
