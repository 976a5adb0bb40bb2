"""Serving both sandbox apps with uvicorn on 127.0.0.1.

Both servers run on one asyncio loop in one background thread, so the caller's own event loop
(an asyncio test, say) is never touched. The listening sockets are bound in the caller's thread
before the thread starts: a port in use fails ``__enter__`` with ``OSError`` right away, and
port 0 is resolved to the real port before any request can be made.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
from types import FrameType, TracebackType

import uvicorn
from starlette.applications import Starlette

from bullphish_billing.sandbox.bullphish_api import bullphish_app
from bullphish_billing.sandbox.config import SandboxConfig
from bullphish_billing.sandbox.kaseyaone_api import KaseyaOneState, kaseyaone_app
from bullphish_billing.sandbox.world import World

HOST = "127.0.0.1"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def _bind(port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says TCP explicitly; without it every keep-alive response waits ~40 ms for a
    # delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # Lets a restarted sandbox take its port back while old connections sit in TIME_WAIT; two
    # live listeners on one port still fail (that needs SO_REUSEPORT, which is not set).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def _uvicorn_server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        log_config=None,  # never reconfigure the host process's logging
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


class RunningSandbox:
    """Both sandbox servers, running in a background thread for the ``with`` block.

    ``bullphish_url`` / ``kaseyaone_url`` are ``http://127.0.0.1:<port>``; ``world`` is the data
    they serve and ``kaseyaone`` the KaseyaOne store. Ports 0 pick free ports.
    """

    def __init__(
        self,
        config: SandboxConfig = SandboxConfig(),  # noqa: B008 - frozen, so a safe default
        bullphish_port: int = 0,
        kaseyaone_port: int = 0,
    ) -> None:
        self.config = config
        self.world = World(config)
        self.kaseyaone = KaseyaOneState()
        self.bullphish_app = bullphish_app(self.world, config)
        self.kaseyaone_app = kaseyaone_app(self.world, config, self.kaseyaone)
        self._ports = (bullphish_port, kaseyaone_port)
        self.bullphish_url = ""
        self.kaseyaone_url = ""
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> RunningSandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind both ports and serve; returns once both servers accept connections."""
        if self._thread is not None:
            raise RuntimeError("this sandbox was already started")
        sockets = [_bind(self._ports[0])]
        try:
            sockets.append(_bind(self._ports[1]))
        except OSError:
            sockets[0].close()
            raise
        self.bullphish_url = f"http://{HOST}:{sockets[0].getsockname()[1]}"
        self.kaseyaone_url = f"http://{HOST}:{sockets[1].getsockname()[1]}"
        self._servers = [_uvicorn_server(self.bullphish_app), _uvicorn_server(self.kaseyaone_app)]
        self._thread = threading.Thread(
            target=self._run, args=(sockets,), name="bullphish-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while not all(s.started for s in self._servers):
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the sandbox servers did not start") from self._error
                time.sleep(0.002)
        except BaseException:  # including Ctrl-C while starting: leave nothing running
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both servers, close their ports and join the thread (idempotent)."""
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive():  # a stuck connection: stop waiting for it
                for server in self._servers:
                    server.force_exit = True
                self._thread.join(_STOP_TIMEOUT_S)

    def _run(self, sockets: list[socket.socket]) -> None:
        async def serve_both() -> None:
            await asyncio.gather(
                *(s.serve(sockets=[sock]) for s, sock in zip(self._servers, sockets, strict=True))
            )

        try:
            asyncio.run(serve_both())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
        finally:
            for sock in sockets:
                sock.close()


def serve(
    config: SandboxConfig,
    bullphish_port: int = 8701,
    kaseyaone_port: int = 8702,
    *,
    quiet: bool = False,
) -> None:
    """Serve both sandbox APIs on 127.0.0.1 until Ctrl-C (or SIGTERM), then stop cleanly.

    Unless ``quiet``, prints the two URLs and the settings a client needs to stdout first.
    Raises ``OSError`` when a port is taken.
    """
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        with RunningSandbox(config, bullphish_port, kaseyaone_port) as sandbox:
            try:
                if not quiet:
                    print(_banner(sandbox), flush=True)
                while sandbox.running and not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            if not sandbox.running and not stop.is_set():
                raise RuntimeError("the sandbox servers stopped unexpectedly")
            if not quiet:
                print("sandbox: stopping", file=sys.stderr, flush=True)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _banner(sandbox: RunningSandbox) -> str:
    """Where the servers are and how to point a client at them. Credentials are shown only
    when they are the sandbox's built-in, public defaults."""
    cfg = sandbox.config
    defaults = SandboxConfig()

    def shown(name: str) -> str:
        value = getattr(cfg, name)
        return value if value == getattr(defaults, name) else "<as configured>"

    return "\n".join(
        (
            f"BullPhish ID sandbox: {sandbox.bullphish_url}",
            f"KaseyaOne sandbox:    {sandbox.kaseyaone_url}",
            f"{cfg.partners} partners x {cfg.organizations_per_partner} organizations x "
            f"~{cfg.targets_per_organization} targets, seed {cfg.seed}, "
            f"today {sandbox.world.today}",
            "Point the pipeline at it with:",
            f"  BULLPHISH_API_URL={sandbox.bullphish_url}",
            f"  BULLPHISH_API_TOKEN={shown('bullphish_token')}",
            f"  KASEYAONE_API_URL={sandbox.kaseyaone_url}",
            f"  KASEYAONE_CLIENT_ID={shown('kaseyaone_client_id')}",
            f"  KASEYAONE_CLIENT_SECRET={shown('kaseyaone_client_secret')}",
            "Press Ctrl-C to stop.",
        )
    )
