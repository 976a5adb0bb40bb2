"""CPU seconds of this process's threads, grouped by name (Linux /proc), sampled every half
second so that threads that end before the run does (asyncio's worker threads, Prefect's) are
counted too: a thread's last sample is kept, so at most its last half second is missed."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _group(name: str) -> str:
    """`asyncio_3` -> `asyncio_*`: one line per kind of thread."""
    return re.sub(r"[-_]?\d+(_\d+)?$", "_*", name)


class ThreadCpu:
    def __init__(self, every_s: float = 0.5) -> None:
        self._seen: dict[int, tuple[str, float]] = {}
        self._before = self._sample(record=False)
        self._stop = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._run, name="bench-thread-cpu", daemon=True)
        self._thread.start()

    def _sample(self, record: bool = True) -> dict[int, float]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        now: dict[int, float] = {}
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            tid = int(task.name)
            now[tid] = (int(fields[11]) + int(fields[12])) / _TICK
            if record:
                name = names.get(tid) or self._seen.get(tid, ("native (DuckDB, Arrow, ...)", 0))[0]
                self._seen[tid] = (name, now[tid])
        return now

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_group(self) -> dict[str, float]:
        """CPU seconds since this object was made, per kind of thread, most first."""
        groups: dict[str, float] = {}
        for tid, (name, cpu) in self._seen.items():
            key = _group(name)
            groups[key] = groups.get(key, 0.0) + cpu - self._before.get(tid, 0.0)
        return dict(sorted(((k, round(v, 2)) for k, v in groups.items()), key=lambda kv: -kv[1]))
