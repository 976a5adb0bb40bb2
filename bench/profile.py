"""Where the daily flow's process spends its CPU, at a scale: `python -m bench.profile --scale S`.

Starts what `bench.run` starts (a local Prefect server, the sandbox at the scale, warmed by one
fetch-floor pass), measures the fetch floor's CPU, runs the flow `--runs` times unprofiled in a
child (CPU seconds of the child, wall time, peak RSS, the extract stage), then once more under
`py-spy record --native` (optional: pip install py-spy), and prints the profile grouped by
library: self time (the innermost frame that belongs to a known library), cumulative time (any
frame), the functions with most self time, and which of our own functions the CPU was spent
under. Each run bills the same date into a warehouse of its own. No figure is asserted.

py-spy samples only threads that are running (not waiting), so the samples approximate CPU;
it pauses the process for each sample, so the profiled run is slower than the unprofiled ones,
whose figures are the ones to quote.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench.cpu import own_cpu_seconds
from bench.fetch_floor import fetch_floor
from bench.run import TOKEN, Sandbox, run_flow
from bench.scales import SCALES
from bullphish_billing.demo import free_port, start_prefect_server, stop, wait_healthy

# (group, what a frame's file path contains), first match wins
_LIBRARIES = (
    ("httpx/httpcore/h11/anyio", ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/")),
    ("orjson", ("/orjson",)),
    ("pyarrow", ("/pyarrow/", "libarrow", "libparquet")),
    ("pandera", ("/pandera/",)),
    ("pandas/numpy", ("/pandas/", "/numpy/", "numpy.libs", "libopenblas")),
    ("duckdb", ("/duckdb/", "_duckdb")),
    ("prefect", ("/prefect/",)),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("sqlalchemy/sqlite", ("/sqlalchemy/", "/aiosqlite/", "sqlite3")),
    ("our code", ("/bullphish_billing/", "/flows/", "/bench/")),
    ("asyncio/selectors/socket", ("/asyncio/", "selectors.py", "socket.py", "ssl.py")),
    ("threads/futures", ("/concurrent/", "threading.py", "queue.py")),
    ("importing", ("<frozen importlib", "importlib/")),
)
# a sample whose innermost frames wait (for the GIL, a lock, a socket, a timer) is no CPU:
# py-spy's idle filter does not see these with --native
_WAITS = frozenset(
    (
        "pthread_cond_timedwait",
        "pthread_cond_wait",
        "PyThread_acquire_lock_timed",
        "epoll_wait",
        "clock_nanosleep",
        "nanosleep",
        "sem_wait",
        "sem_timedwait",
        "poll",
        "__poll",
        "select",
        "futex_wait",
    )
)
# (activity, what a frame contains): the innermost frame that matches one of these decides;
# a sample none of them matches is the extract stage's when it runs under it (its event loop,
# batching), else Prefect's when a Prefect frame is on its stack
_ACTIVITIES = (
    ("decode pages (Arrow's JSON reader; orjson)", ("ArrowPageDecoder", "decode_json")),
    ("validate (pandera, Arrow compute)", ("validate_table", "validate_records", "_validate (")),
    ("write raw snapshots (DuckDB)", ("write_snapshots", "replace_partners")),
    ("HTTP (httpx, asyncio)", ("send_with_retries", "/httpx/", "/httpcore/", "/anyio/", "/h11/")),
    (
        "evaluate, notable changes, fates (DuckDB)",
        ("billing_rules", "target_fates", "stale_targets", "notable"),
    ),
    ("deliver, reconcile, report (KaseyaOne, DuckDB)", ("delivery", "kaseyaone", "reconcil")),
    ("imports", ("importlib",)),
)
_FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")


def _library(frame: str) -> str | None:
    """The group of a frame, or None for frames that say nothing (libc, the interpreter)."""
    match = _FRAME.match(frame)
    where = match["where"] if match else frame
    for group, marks in _LIBRARIES:
        if any(m in where for m in marks):
            return group
    if "/lib/python3" in where and ".py" in where:
        return "other stdlib"
    if "site-packages" in where:
        return "other libraries"
    return None


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    where = match["where"]
    for cut in ("site-packages/", "/lib/python3.11/", "/wt-cpu/", "/work/"):
        if cut in where:
            where = where.split(cut, 1)[1]
            break
    name = match["name"]
    return f"{name[:80]} ({where})"


def _activity(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marks in _ACTIVITIES:
            if any(m in frame for m in marks):
                return name
    if any("bullphish_billing/extract.py" in f or "extract (" in f for f in frames):
        return "extract: event loop, batching"
    if any("/prefect/" in f for f in frames):
        return "Prefect (engine, API client, events)"
    return "other (idle pool threads woken, interpreter)"


def summarize(raw: Path, top: int = 25, cpu_seconds: float | None = None) -> str:
    """Tables of a `py-spy record --format raw` file (one line: frames;... count); with the
    run's `cpu_seconds`, the activities' shares also as seconds."""
    self_lib: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    self_fn: collections.Counter[str] = collections.Counter()
    under_ours: collections.Counter[str] = collections.Counter()
    activity: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if any(f.split(" (", 1)[0] in _WAITS for f in frames[-4:]):
            waiting += n
            continue
        total += n
        groups = [_library(f) for f in frames]
        leaf = next(
            ((f, g) for f, g in zip(reversed(frames), reversed(groups), strict=True) if g), None
        )
        self_lib[leaf[1] if leaf else "unknown"] += n
        self_fn[_short(leaf[0]) if leaf else "unknown"] += n
        for g in set(groups) - {None}:
            cumulative[g] += n
        ours = next(
            (f for f, g in zip(reversed(frames), reversed(groups), strict=True) if g == "our code"),
            None,
        )
        under_ours[_short(ours) if ours else "(none of our frames)"] += n
        activity[_activity(frames)] += n

    def table(title: str, counts: collections.Counter[str], limit: int | None = None) -> list[str]:
        lines = [title]
        for key, n in counts.most_common(limit):
            lines.append(f"  {n / total:6.1%} {n:7d}  {key}")
        return lines

    out = [f"{total} samples on CPU; {waiting} more left out as waiting (GIL, locks, I/O, timers)"]
    out.append("by activity (the innermost frame that tells):")
    for key, n in activity.most_common():
        seconds = f"{n / total * cpu_seconds:6.1f} s" if cpu_seconds else ""
        out.append(f"  {n / total:6.1%} {seconds}  {key}")
    out += table("self, by library (innermost frame of a known library):", self_lib)
    out += table("cumulative, by library (any frame):", cumulative)
    out += table(f"self, top {top} functions:", self_fn, top)
    out += table(f"under which of our functions (innermost), top {top}:", under_ours, top)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="S")
    parser.add_argument("--runs", type=int, default=1, help="unprofiled flow runs (default 1)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    parser.add_argument(
        "--native",
        action="store_true",
        help="py-spy --native: C/C++ frames too (Arrow, DuckDB, orjson), but py-spy must then "
        "stop the process for each sample, and its idle filter no longer works (samples of "
        "waiting threads are left out by their innermost frames instead, less exactly)",
    )
    args = parser.parse_args(argv)
    py_spy = None if args.no_profile else shutil.which("py-spy")
    if py_spy is None and not args.no_profile:
        bin_dir = Path(sys.executable).parent
        py_spy = shutil.which("py-spy", path=str(bin_dir))
        if py_spy is None:
            print("py-spy is not installed (pip install py-spy): no profile, figures only")
    scale = SCALES[args.scale]
    work = Path(tempfile.mkdtemp(prefix="bpb-profile-"))
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    home = work / "prefect-home"
    port = free_port(0)
    api_url = f"http://127.0.0.1:{port}/api"
    server = start_prefect_server(home, port, work / "prefect-server.log")
    try:
        wait_healthy(api_url, server, 120)
        sandbox = Sandbox(scale)
        try:
            fetch_floor(sandbox.bullphish_url, TOKEN, day)  # fills the sandbox's cache
            before = own_cpu_seconds()
            floor = fetch_floor(sandbox.bullphish_url, TOKEN, day)
            floor_cpu = own_cpu_seconds() - before
            print(
                f"scale {scale.name}: fetch floor {floor['seconds']:.2f} s, "
                f"CPU {floor_cpu:.2f} s ({floor['records']} records)"
            )
            runs = [(f"run {i + 1}", []) for i in range(args.runs)]
            raw = args.raw or work / "profile.raw"
            if py_spy:
                rate = str(args.rate)
                spy = [py_spy, "record", "--full-filenames", "--format", "raw"]
                spy.append("--native" if args.native else "--nonblocking")
                runs.append(("profiled", [*spy, "--rate", rate, "-o", str(raw), "--"]))
            cpu = None
            for label, prefix in runs:
                run_dir = work / label.replace(" ", "-")
                run_dir.mkdir()
                result = run_flow(sandbox, api_url, home, run_dir, day, server.pid, prefix)
                print(
                    f"{label}: flow {result['flow_seconds']:.2f} s, extract "
                    f"{result['stages'].get('extract', 0.0):.2f} s, CPU "
                    f"{result['cpu_seconds']:.2f} s ({result['cpu_seconds'] / floor_cpu:.2f}x "
                    f"the floor's), peak RSS {result['peak_rss_mb']:.0f} MB, records "
                    f"{result['records']}, metrics {result['metrics']}, exit {result['exit_code']}"
                )
                by_thread = ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_by_thread"].items())
                print(f"  CPU s by thread: {by_thread}")
                cpu = result["cpu_seconds"]
            if py_spy:
                print(summarize(raw, cpu_seconds=cpu))
        finally:
            sandbox.close()
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
