"""`python -m bullphish_billing._server_guard COMMAND...`: run COMMAND (Prefect's temporary
server) for as long as this process's standard input stays open.

The command line starts this in a session (process group) of its own with a pipe as its
stdin, and keeps the pipe's other end. When the command line goes away, however it goes
(its own exit, os._exit, SIGKILL), the kernel closes that end; this process then reads
end-of-file and stops the server's whole process group: SIGTERM, and SIGKILL after
STOP_TIMEOUT_S. SIGINT and SIGTERM sent to the command line's process group (Ctrl-C, systemd,
`docker stop`) never reach it: it is in another group, and it ignores both itself. The server
exiting on its own ends this process with its exit code.

Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

STOP_TIMEOUT_S = 10.0


def _ignore(signum, frame) -> None:  # a handler, not SIG_IGN: the server gets the defaults
    pass


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bullphish_billing._server_guard COMMAND...", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _ignore)
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        # the command line is gone, or done with the server: stop the whole group
        os.killpg(0, signal.SIGTERM)  # this process ignores it
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(0, signal.SIGKILL)  # this process too
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
