"""Staged extracts: what a shard extracted, as Parquet files with a manifest, and their load.

A shard (the `extract-shard` flow, scale-out) extracts its partners exactly as the daily run
does, but its complete snapshots go to a `StagingSink` instead of the warehouse: each group the
extraction's writer stores becomes one Parquet file per part (`warehouse.raw.SNAPSHOT_PARTS`).
When the shard is done it writes its manifest, last: the files with their row counts, sizes and
SHA-256, and every partner's extract result (failures included). A shard's files without a
manifest do not exist for the loader.

The one writer of the warehouse (the daily run) then checks each manifest against its files and
loads every shard's parts into `raw.*` and `ops.*` in one transaction, with the same SQL as an
in-process extract (`warehouse.raw.load_snapshot_parts`).

Where: BILLING_STAGING_URL, a local path or any URL fsspec opens (s3://, gs://, a shared file
system), laid out as `{staging}/{usage_date}/{run_id}/shard-{n}/`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import threading
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from bullphish_billing.extract import ExtractResult
from bullphish_billing.warehouse.db import transaction
from bullphish_billing.warehouse.raw import (
    Snapshot,
    extracted_partners,
    load_snapshot_parts,
    snapshot_parts,
)

MANIFEST = "manifest.json"
FORMAT = 1


class StagingError(Exception):
    """A shard's staged output is missing, incomplete or not what its manifest says."""


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file of a shard: which part it holds, its name within the shard's
    directory, and what the loader checks."""

    part: str
    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What a shard staged; written last, so its presence says the shard is complete."""

    usage_date: dt.date
    run_id: str  # the daily run the shard extracted for
    shard: int
    shard_run_id: str
    results: dict[str, ExtractResult] = field(default_factory=dict)
    files: list[StagedFile] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)  # the shard's seconds, peak RSS

    @property
    def extracted(self) -> list[str]:
        """The partners whose snapshot the files hold (their extract succeeded)."""
        return sorted(p for p, r in self.results.items() if not r.error)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "usage_date": self.usage_date.isoformat(),
                "run_id": self.run_id,
                "shard": self.shard,
                "shard_run_id": self.shard_run_id,
                "results": [asdict(r) for r in self.results.values()],
                "files": [asdict(f) for f in self.files],
                "stats": self.stats,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise StagingError(f"manifest format {data.get('format')!r}, expected {FORMAT}")
        return cls(
            usage_date=dt.date.fromisoformat(data["usage_date"]),
            run_id=data["run_id"],
            shard=int(data["shard"]),
            shard_run_id=data["shard_run_id"],
            results={r["partner_id"]: ExtractResult(**r) for r in data["results"]},
            files=[StagedFile(**f) for f in data["files"]],
            stats=data.get("stats", {}),
        )


@dataclass(frozen=True)
class ShardLocation:
    """A shard's directory under the staging URL, and the file system that holds it."""

    fs: fsspec.AbstractFileSystem
    root: str  # the directory, in `fs`'s own spelling (no protocol)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url(self, name: str) -> str:
        """The file as DuckDB reads it: a plain path for a local file system, else the URL
        of the file system registered with the connection (`load`)."""
        path = self.path(name)
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)


def staging_root(staging_url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and root directory of BILLING_STAGING_URL."""
    fs, root = fsspec.core.url_to_fs(staging_url)
    return fs, root.rstrip("/")


def shard_location(staging_url: str, usage_date: dt.date, run_id: str, shard: int) -> ShardLocation:
    """Where shard `shard` of run `run_id` stages its files for `usage_date`."""
    fs, root = staging_root(staging_url)
    return ShardLocation(fs, f"{root}/{usage_date.isoformat()}/{run_id}/shard-{shard}")


class StagingSink:
    """Extraction's sink for a shard (`extract.SnapshotSink`): each group of complete
    snapshots becomes one Parquet file per part, written whole (`pipe_file`), with its
    SHA-256 taken from the bytes written."""

    def __init__(self, location: ShardLocation) -> None:
        self.location = location
        self.files: list[StagedFile] = []
        self._groups = 0
        location.fs.makedirs(location.root, exist_ok=True)

    def write(self, snapshots: list[Snapshot]) -> None:
        group, self._groups = self._groups, self._groups + 1
        for part, table in snapshot_parts(snapshots).items():
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            data = sink.getvalue().to_pybytes()
            name = f"part-{group:05d}-{part}.parquet"
            self.location.fs.pipe_file(self.location.path(name), data)
            self.files.append(
                StagedFile(part, name, table.num_rows, len(data), hashlib.sha256(data).hexdigest())
            )


SIGN_OF_LIFE = "alive"


class Heartbeat:
    """While a shard extracts, its sign of life: a counter rewritten every `every_s` seconds
    in the shard's directory, by a daemon thread. The orchestrator, on another host, sees the
    shard alive while the counter moves (`sign_of_life`), whatever the two hosts' clocks say;
    a shard whose host or worker died stops moving it."""

    def __init__(self, location: ShardLocation, every_s: float = 2.0) -> None:
        self.location = location
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="shard-heartbeat", daemon=True)

    def _beat(self) -> None:
        beat = 0
        while True:
            beat += 1
            with contextlib.suppress(OSError):  # a missed beat is no failure of the shard
                self.location.fs.pipe_file(
                    self.location.path(SIGN_OF_LIFE), f"{beat} {time.time():.0f}".encode()
                )
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> Heartbeat:
        self.location.fs.makedirs(self.location.root, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def sign_of_life(location: ShardLocation) -> str | None:
    """The shard's last heartbeat as written (None before its first)."""
    try:
        return location.fs.cat_file(location.path(SIGN_OF_LIFE)).decode()
    except (FileNotFoundError, OSError):
        return None


def write_manifest(location: ShardLocation, manifest: Manifest) -> None:
    """Write the shard's manifest, last, whole: to a temporary name, then moved into place
    (a rename on a file system, one PUT on an object store)."""
    temporary = location.path(f".{MANIFEST}.partial")
    location.fs.pipe_file(temporary, manifest.to_json().encode())
    location.fs.mv(temporary, location.path(MANIFEST))


def read_manifest(location: ShardLocation) -> Manifest:
    """The shard's manifest, checked against its files (each present, of its size, its rows
    and its SHA-256); StagingError naming what is wrong otherwise."""
    fs = location.fs
    try:
        manifest = Manifest.from_json(fs.cat_file(location.path(MANIFEST)).decode())
    except FileNotFoundError:
        raise StagingError(f"no {MANIFEST} in {location.root}: the shard staged nothing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise StagingError(f"unreadable {MANIFEST} in {location.root}: {exc}") from None
    for staged in manifest.files:
        try:  # one read: a staged file is one write group's part, a few MB
            data = fs.cat_file(location.path(staged.name))
        except FileNotFoundError:
            raise StagingError(f"{staged.name} of {location.root} is missing") from None
        if len(data) != staged.bytes or hashlib.sha256(data).hexdigest() != staged.sha256:
            raise StagingError(f"{staged.name} of {location.root} is not the file staged")
        try:
            rows = pq.read_metadata(pa.BufferReader(data)).num_rows
        except (OSError, pa.ArrowException) as exc:  # the checksum matched: written so
            raise StagingError(f"{staged.name} of {location.root} is no Parquet: {exc}") from None
        if rows != staged.rows:
            raise StagingError(f"{staged.name} holds {rows} rows, the manifest says {staged.rows}")
    return manifest


def load(
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    shards: list[tuple[ShardLocation, Manifest]],
    run_id: str,
) -> None:
    """Load the checked shards' parts into the warehouse in one transaction, each partner-date
    replacing its previous snapshot, as an in-process extract does."""
    partner_ids = [p for _, manifest in shards for p in manifest.extracted]
    if not partner_ids:
        return
    files: dict[str, list[str]] = {}
    registered = set(con.list_filesystems())
    for location, manifest in shards:
        if not isinstance(location.fs, LocalFileSystem) and _name(location.fs) not in registered:
            con.register_filesystem(location.fs)
            registered.add(_name(location.fs))
        for staged in manifest.files:
            files.setdefault(staged.part, []).append(location.url(staged.name))
    sources = {
        part: "read_parquet([{}])".format(", ".join(_quoted(u) for u in urls))
        for part, urls in files.items()
    }
    replacing = extracted_partners(con, usage_date)
    with closing(con.cursor()) as cur, transaction(cur):
        load_snapshot_parts(cur, usage_date, sources, partner_ids, run_id, replacing=replacing)


def remove(location: ShardLocation) -> None:
    """Remove a shard's staged files (after they are loaded)."""
    if location.fs.exists(location.root):
        location.fs.rm(location.root, recursive=True)


JUDGED = "judged"


def mark_judged(location: ShardLocation, day: dt.date) -> None:
    """Record that the run has loaded (or given up on) the shard, on `day` (UTC): from then
    on its files are kept only for audit, and `prune` may remove them."""
    if location.fs.exists(location.root):
        location.fs.pipe_file(location.path(JUDGED), day.isoformat().encode())


def prune(staging_url: str, keep_days: int, today: dt.date) -> list[str]:
    """Remove the shard directories judged more than `keep_days` days before `today` (the
    audit copies BILLING_STAGING_KEEP_DAYS keeps); return them. A shard directory without the
    mark belongs to a run still at work (a backfill's other date, another run) and is left
    alone, whatever its usage date."""
    fs, root = staging_root(staging_url)
    removed = []
    for mark in sorted(fs.glob(f"{root}/*/*/shard-*/{JUDGED}")):
        directory = mark.rsplit("/", 1)[0]
        try:
            judged = dt.date.fromisoformat(fs.cat_file(mark).decode().strip())
        except (ValueError, OSError):
            continue  # not ours, or gone meanwhile
        if judged < today - dt.timedelta(days=keep_days):
            fs.rm(directory, recursive=True)
            removed.append(directory)
    return removed


def _name(fs: fsspec.AbstractFileSystem) -> str:
    """The name DuckDB registers an fsspec file system under (its first protocol)."""
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
