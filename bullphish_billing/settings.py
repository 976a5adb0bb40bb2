"""Configuration from the environment (and an optional `.env` file).

The names are fixed by docs/billing-rules.md. Secrets are held as `SecretStr` so that they
never show in a repr, a log line or an exception.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bullphish_billing.errors import ConfigurationError
from bullphish_billing.lease import lease_dir
from bullphish_billing.text import shown


class Settings(BaseSettings):
    """Everything the pipeline needs from its environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    bullphish_api_url: str | None = Field(None, alias="BULLPHISH_API_URL")
    bullphish_api_token: SecretStr | None = Field(None, alias="BULLPHISH_API_TOKEN")
    kaseyaone_api_url: str | None = Field(None, alias="KASEYAONE_API_URL")
    kaseyaone_client_id: str | None = Field(None, alias="KASEYAONE_CLIENT_ID")
    kaseyaone_client_secret: SecretStr | None = Field(None, alias="KASEYAONE_CLIENT_SECRET")
    warehouse: Path = Field(Path("data/warehouse.duckdb"), alias="BILLING_WAREHOUSE")
    hold_threshold: float = Field(
        0.01,
        alias="BILLING_HOLD_THRESHOLD",
        ge=0.0,
        le=1.0,
        description="Share of a partner's records for a date that may be quarantined "
        "before the whole partner-date is held for review (docs/billing-rules.md rule 7).",
    )
    page_limit: int = Field(1000, alias="BILLING_PAGE_LIMIT", ge=1, le=1000)
    max_connections: int = Field(8, alias="BILLING_MAX_CONNECTIONS", ge=1, le=64)
    http_deadline_s: float = Field(
        120.0,
        alias="BILLING_HTTP_DEADLINE_S",
        gt=0,
        description="Longest time one API request may take, retries included.",
    )
    run_deadline_s: float = Field(
        10800.0,
        alias="BILLING_RUN_DEADLINE_S",
        gt=0,
        description="Longest time a run may spend on API requests, counted from the start "
        "of the run (its context, run_context.py). Past it, no request is started and "
        "a request on the wire is cut: what is not extracted is failed, what is not sent stays "
        "pending for the next run.",
    )
    warehouse_lock_wait_s: float = Field(
        120.0,
        alias="BILLING_WAREHOUSE_LOCK_WAIT_S",
        ge=0,
        description="How long a stage waits for the warehouse while another process holds it "
        "(DuckDB lets one process write the file; two runs take turns, stage by stage) before "
        "the run ends with a one-line error.",
    )
    list_deadline_s: float = Field(
        300.0,
        alias="BILLING_LIST_DEADLINE_S",
        gt=0,
        description="Longest time one list (a partner's organizations or targets, or a "
        "KaseyaOne list) may take to read to its end, and never more than half of what is "
        "left of the run deadline; past it the partner-date is failed and the others go on.",
    )
    list_empty_pages: int = Field(
        20,
        alias="BILLING_LIST_EMPTY_PAGES",
        ge=0,
        description="Empty pages in a row a list may serve while its cursor goes on.",
    )
    list_spare_pages: int = Field(
        200,
        alias="BILLING_LIST_SPARE_PAGES",
        ge=0,
        description="Pages a list may serve beyond those its records justify (one per tenth "
        "of a full page of records).",
    )
    max_list_records: int = Field(
        500_000,
        alias="BILLING_MAX_LIST_RECORDS",
        ge=1,
        description="Most records one list of a partner may hold (bad ones included); they "
        "are kept in memory until the list ends, so this bounds the run's memory.",
    )
    max_response_mb: float = Field(
        32.0,
        alias="BILLING_MAX_RESPONSE_MB",
        gt=0,
        le=1024,
        description="Largest response body, as inflated (gzip), in MiB; a larger one fails "
        "its partner-date unread.",
    )
    notable_change: float = Field(
        0.2,
        alias="BILLING_NOTABLE_CHANGE",
        ge=0.0,
        description="A per-user count is a notable change when it moved by more than this "
        "share of the previous day's count, and by at least BILLING_NOTABLE_MIN_USERS.",
    )
    notable_min_users: int = Field(
        5,
        alias="BILLING_NOTABLE_MIN_USERS",
        ge=0,
        description="The fewest users a notable per-user change moves (with "
        "BILLING_NOTABLE_CHANGE).",
    )
    stale_days: int = Field(
        180,
        alias="BILLING_STALE_DAYS",
        ge=1,
        description="An active target whose updated_at is older than this many days before "
        "the usage date is a stale user (counted in stale_active_targets; billing does not "
        "change).",
    )
    stale_share: float = Field(
        0.25,
        alias="BILLING_STALE_SHARE",
        ge=0.0,
        le=1.0,
        description="A per-user organization whose stale users are more than this share of "
        "its active users is listed in the run's notable-changes artifact.",
    )
    reconcile_days: int = Field(
        7,
        alias="BILLING_RECONCILE_DAYS",
        ge=0,
        le=399,
        description="After delivery, the daily run reads back from KaseyaOne the date it "
        "delivered, the day before it and the date this many days before it, and repairs the "
        "differences found in that window (docs/billing-rules.md rule 11); 0 turns the "
        "reconciliation off.",
    )
    raw_retention_days: int = Field(
        90,
        alias="BILLING_RAW_RETENTION_DAYS",
        ge=0,
        le=36500,
        description="At the end of each run that is not a dry run, keep the target snapshots "
        "(raw.targets, one row per user per date) of this many usage dates ending yesterday "
        "(UTC), and drop those of older dates: rows with usage_date < yesterday - (N - 1) "
        "days, each drop recorded in ops.raw_retention. The counts (ops.target_fates, "
        "metric_explanations) and everything else stay. 0 keeps every snapshot.",
    )
    shards: int = Field(
        1,
        alias="BILLING_SHARDS",
        ge=1,
        le=64,
        description='Extract shards per run (README "Scaling out"): 1 extracts in the run\'s '
        "own process; K > 1 splits the billable partners into K shards, each extracted by a "
        "run of the extract-shard deployment (on the bullphish-shards work pool) into "
        "Parquet under BILLING_STAGING_URL, which the run then loads.",
    )
    staging_url: str | None = Field(
        None,
        alias="BILLING_STAGING_URL",
        description="Where extract shards stage their Parquet files: a local path, or a URL "
        "fsspec opens (s3://, gs://, a shared file system) that every shard host and the "
        "warehouse host reach (default: staging beside the warehouse).",
    )
    staging_keep_days: int = Field(
        0,
        alias="BILLING_STAGING_KEEP_DAYS",
        ge=0,
        le=3650,
        description="Keep a shard's staged files this many days after the run loaded them "
        "or gave up on them (for audit); 0 removes them then.",
    )
    shard_timeout_s: float = Field(
        3600.0,
        alias="BILLING_SHARD_TIMEOUT_S",
        gt=0,
        description="Longest a run waits for one of its extract shards (from its start to its "
        "end, never past the run's deadline); a shard not done by then has its partners "
        "failed, named, and billed by the next run.",
    )
    shard_silence_s: float = Field(
        60.0,
        alias="BILLING_SHARD_SILENCE_S",
        gt=0,
        description="A running extract shard rewrites a sign of life in its staging directory "
        "every 2 s; one whose sign stops moving this long is taken for dead (its host or "
        "worker died, which Prefect cannot see): its run is marked Crashed and its partners "
        "failed, for the next run to bill.",
    )
    analytics_file: Path | None = Field(
        None,
        alias="BILLING_ANALYTICS_FILE",
        description="The DuckDB file published for analysts after each run (default: "
        "analytics.duckdb next to the warehouse). Never the warehouse or one of its files; "
        "a file there that publishing did not write is left alone.",
    )

    @field_validator("warehouse", "analytics_file", mode="before")
    @classmethod
    def _not_empty(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str) and not value.strip():
            name = cls.model_fields[info.field_name].alias
            raise ConfigurationError(f"{name} is empty: set it to a file path, or unset it")
        return value

    @model_validator(mode="after")
    def _check_files(self) -> Settings:
        """The warehouse and the analysts' file must be files, and two different ones: the
        analysts' file is replaced whole after every run, so it may be none of the
        warehouse's own files (the file, its WAL, its spill directory, its lease directory),
        whatever the path's spelling (relative, through symlinks or hard links)."""
        for name, path in (
            ("BILLING_WAREHOUSE", self.warehouse),
            ("BILLING_ANALYTICS_FILE", self.analytics_path),
        ):
            if path.name in ("", ".", "..") or path.is_dir():
                raise ConfigurationError(
                    f"{name} must name a file, not the directory {shown(path)}"
                )
        analytics = self.analytics_path.resolve()
        for what, path in self.warehouse_files().items():
            if _same_or_inside(analytics, path):
                raise ConfigurationError(
                    f"the analysts' file {shown(self.analytics_path)} (BILLING_ANALYTICS_FILE; "
                    f"default analytics.duckdb beside the warehouse) is {what}: publishing "
                    "replaces it after every run, so it must be a file of its own"
                )
        return self

    def warehouse_files(self) -> dict[str, Path]:
        """The files and directories the warehouse owns, by what they are."""
        warehouse = self.warehouse
        return {
            "the warehouse (BILLING_WAREHOUSE)": warehouse,
            "the warehouse's WAL": Path(f"{warehouse}.wal"),
            "the warehouse's spill directory": Path(f"{warehouse}.tmp"),
            "the warehouse's lease directory": lease_dir(warehouse),
        }

    @property
    def analytics_path(self) -> Path:
        """Where the analysts' copy of the warehouse is published."""
        return self.analytics_file or self.warehouse.with_name("analytics.duckdb")

    @property
    def staging_location(self) -> str:
        """Where extract shards stage their files (BILLING_STAGING_URL, or beside the
        warehouse)."""
        return self.staging_url or str(self.warehouse.with_name("staging"))

    def require_apis(self) -> None:
        """Raise ConfigurationError naming every missing variable the APIs need."""
        required = {
            "BULLPHISH_API_URL": self.bullphish_api_url,
            "BULLPHISH_API_TOKEN": self.bullphish_api_token,
            "KASEYAONE_API_URL": self.kaseyaone_api_url,
            "KASEYAONE_CLIENT_ID": self.kaseyaone_client_id,
            "KASEYAONE_CLIENT_SECRET": self.kaseyaone_client_secret,
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise ConfigurationError(
                f"missing configuration: {', '.join(missing)} (set them in the environment "
                "or a .env file; `bullphish-billing demo` needs none)"
            )
        credentials = {
            "BULLPHISH_API_URL": "BULLPHISH_API_TOKEN",
            "KASEYAONE_API_URL": "KASEYAONE_CLIENT_ID and KASEYAONE_CLIENT_SECRET",
        }
        for name, credential in credentials.items():
            url = str(required[name])
            if not url.startswith(("http://", "https://")):
                raise ConfigurationError(f"{name} must be an http(s) URL")
            if "@" in urlsplit(url).netloc:  # the URL is never shown: it holds a password
                raise ConfigurationError(
                    f"{name} must not hold credentials (user:password@ before the host): "
                    f"remove them; the API's credentials are {credential}"
                )


def _same_or_inside(path: Path, other: Path) -> bool:
    """Whether resolved `path` is `other` (symlinks and `..` resolved, or the same inode) or
    lies inside it."""
    resolved = other.resolve()
    if path == resolved or path.is_relative_to(resolved):
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them does not exist (yet)
        return False


_WARNED_ENV_FILES: set[Path] = set()
_WARNING = threading.Lock()


def _warn_if_open_to_others(env_file: object) -> None:
    """One line on stderr, once per process, if the `.env` file (it holds the secrets) can be
    read or written by its group or others."""
    if not isinstance(env_file, (str, Path)):
        return
    path = Path(env_file)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:  # no .env: nothing to say
        return
    with _WARNING:
        if not mode & 0o077 or path.resolve() in _WARNED_ENV_FILES:
            return
        _WARNED_ENV_FILES.add(path.resolve())
    print(
        f"bullphish-billing: warning: {shown(path)} holds secrets and is open to its group or "
        f"others (mode {mode:04o}): chmod 600 {shown(path)}",
        file=sys.stderr,
    )


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into a one-line ConfigurationError (a
    `.env` that others may read is reported on stderr, once, and used)."""
    _warn_if_open_to_others(overrides.get("_env_file", Settings.model_config.get("env_file")))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "configuration"
        raise ConfigurationError(f"invalid {where}: {first.get('msg')}") from None
