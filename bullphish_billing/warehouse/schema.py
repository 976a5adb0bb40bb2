"""The warehouse schema: every table, every column and its comment, in one place.

Layers, as schemas:
- `raw`: what BullPhish ID served for a usage date, per record validated, personal data dropped;
- `ops`: how the feed ran: runs, partner-date outcomes, quarantine, the delivery outbox;
- `main`: what analysts query (`billing_metrics` and the views of `sql/views/`).

These are the latest shapes; `migrations.py` brings a warehouse file to them (`migrate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from bullphish_billing.warehouse.views import VIEWS


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    comment: str


@dataclass(frozen=True)
class Table:
    name: str
    comment: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()

    def ddl(self, keys: bool = True) -> str:
        cols = [f"{c.name} {c.type}" for c in self.columns]
        if self.primary_key and keys:
            cols.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  " + ",\n  ".join(cols) + "\n)"


def _c(name: str, type_: str, comment: str) -> Column:
    return Column(name, type_, comment)


USAGE_DATE = _c("usage_date", "DATE NOT NULL", "The usage date (a UTC day) the row belongs to.")
PARTNER_ID = _c("partner_id", "VARCHAR NOT NULL", "BullPhish ID partner (MSP) id, p_...")
RUN_ID = _c("run_id", "VARCHAR", "The run that wrote the row (ops.runs.run_id).")
PAGE_NO = _c("page_no", "INTEGER", "0-based page of the API list the record came on.")
PAGE_ROW = _c("page_row", "INTEGER", "0-based position of the record within its page.")

TABLES: tuple[Table, ...] = (
    Table(
        "ops.schema_version",
        "The warehouse schema version applied by bullphish-billing.",
        (
            _c("version", "INTEGER NOT NULL", "Schema version number."),
            _c("applied_at", "TIMESTAMPTZ NOT NULL", "When this version was applied."),
        ),
    ),
    Table(
        "raw.partners",
        "Partners as BullPhish ID served them for a usage date (as_of = usage date); only "
        "records that passed validation. Replaced whole on every extract of that date.",
        (
            USAGE_DATE,
            _c("id", "VARCHAR NOT NULL", "Partner id."),
            _c("name", "VARCHAR", "Partner (MSP) name."),
            _c("subscription_type", "VARCHAR", "per_organization or per_user."),
            _c("kaseyaone_activated", "BOOLEAN", "kaseyaone.activated as of the date."),
            _c("psa", "VARCHAR", "Connected PSA (autotask, bms) or NULL if none."),
            _c("unified_login_enabled", "BOOLEAN", "kaseyaone.unified_login_enabled."),
            _c("updated_at", "TIMESTAMPTZ", "Record's updated_at as served."),
            PAGE_NO,
            PAGE_ROW,
            RUN_ID,
        ),
    ),
    Table(
        "raw.organizations",
        "Organizations (the MSP's customers, sub-organizations included) as served for a "
        "usage date; only records that passed validation. Replaced per (usage_date, "
        "partner_id) on every extract.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("id", "VARCHAR NOT NULL", "Organization id, o_..."),
            _c("name", "VARCHAR", "Organization (customer company) name."),
            _c("parent_id", "VARCHAR", "Parent organization of a sub-organization, else NULL."),
            _c("status", "VARCHAR", "active or archived as of the date."),
            _c("training_awareness", "BOOLEAN", "Training module enabled as of the date."),
            _c("phishing", "BOOLEAN", "Phishing module enabled as of the date."),
            _c("created_at", "TIMESTAMPTZ", "Record's created_at as served."),
            PAGE_NO,
            PAGE_ROW,
            RUN_ID,
        ),
    ),
    Table(
        "raw.targets",
        "Targets (users) as served for a usage date, without personal data (no email, no "
        "names); only records that passed validation. Replaced per (usage_date, partner_id).",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("id", "VARCHAR NOT NULL", "Target id, t_..."),
            _c("organization_id", "VARCHAR", "The organization the target belongs to."),
            _c("status", "VARCHAR", "active or inactive as of the date."),
            _c("updated_at", "TIMESTAMPTZ", "Record's updated_at as served."),
            PAGE_NO,
            PAGE_ROW,
            RUN_ID,
        ),
    ),
    Table(
        "ops.extractions",
        "One row per extracted (usage_date, partner_id): how many records were received.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c(
                "organizations_received",
                "BIGINT",
                "Organization records received, bad ones included.",
            ),
            _c("targets_received", "BIGINT", "Target records received, bad ones included."),
            _c("pages", "INTEGER", "API pages fetched for the partner."),
            _c("extracted_at", "TIMESTAMPTZ", "When the extract was committed."),
            RUN_ID,
        ),
        ("usage_date", "partner_id"),
    ),
    Table(
        "ops.quarantine",
        "Every record that was not counted because it is bad, with the reason "
        "(docs/billing-rules.md rules 6-7). Records are identified by id (when the id itself is valid) and position.",
        (
            USAGE_DATE,
            _c(
                "partner_id",
                "VARCHAR",
                "Partner the record belongs to (NULL for a partner record whose id is bad).",
            ),
            _c("entity", "VARCHAR NOT NULL", "partner, organization or target."),
            _c("record_id", "VARCHAR", "The record's id, if it is a well-formed id; else NULL."),
            PAGE_NO,
            PAGE_ROW,
            _c(
                "stage",
                "VARCHAR NOT NULL",
                "record (failed per-record validation) or set (duplicate, unknown organization).",
            ),
            _c("reason", "VARCHAR NOT NULL", "Why the record was quarantined."),
            RUN_ID,
            _c("recorded_at", "TIMESTAMPTZ NOT NULL", "When the quarantine row was written."),
        ),
    ),
    Table(
        "ops.runs",
        "One row per run of the daily flow (one usage date).",
        (
            _c(
                "run_id",
                "VARCHAR NOT NULL",
                "Run id (the Prefect flow run id when run by Prefect).",
            ),
            USAGE_DATE,
            _c("dry_run", "BOOLEAN NOT NULL", "True if nothing was to be sent."),
            _c("started_at", "TIMESTAMPTZ NOT NULL", "Run start."),
            _c("finished_at", "TIMESTAMPTZ", "Run end; NULL while running or if it crashed."),
            _c("exit_code", "INTEGER", "0 all delivered, 1 something held, rejected or failed."),
        ),
        ("run_id",),
    ),
    Table(
        "ops.partner_runs",
        "The run log: one row per run and partner-date with its outcome: delivered, partial "
        "(some organizations held or metrics rejected), skipped (+reason), held (+reason), "
        "failed (+error) or dry_run.",
        (
            RUN_ID,
            USAGE_DATE,
            PARTNER_ID,
            _c("subscription_type", "VARCHAR", "per_organization or per_user (NULL if unknown)."),
            _c(
                "status",
                "VARCHAR NOT NULL",
                "delivered, partial, skipped, held, failed or dry_run.",
            ),
            _c("reason", "VARCHAR", "Why skipped, held or failed; NULL when delivered."),
            _c("organizations_billed", "INTEGER", "Organizations with metrics computed."),
            _c(
                "organizations_held",
                "INTEGER",
                "Organizations held because their own record is bad.",
            ),
            _c("records_received", "BIGINT", "Organization and target records received."),
            _c("records_quarantined", "BIGINT", "Of those, quarantined."),
            _c("metrics_computed", "INTEGER", "Metrics computed for the partner-date."),
            _c(
                "metrics_held",
                "INTEGER",
                "Metrics not computed because their organization or the whole partner-date is held.",
            ),
            _c("metrics_sent", "INTEGER", "Metrics sent to KaseyaOne by this run."),
            _c(
                "metrics_rejected",
                "INTEGER",
                "Current metrics that KaseyaOne rejected (this run or earlier).",
            ),
            _c("finished_at", "TIMESTAMPTZ NOT NULL", "When the outcome was recorded."),
        ),
        ("run_id", "usage_date", "partner_id"),
    ),
    Table(
        "main.billing_metrics",
        "The current billing metrics of every usage date processed: per partner, "
        "organization and billing type, the units reported (or, for a dry run, to be reported) "
        "to KaseyaOne. Replaced per partner-date on each run that computes it.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("organization_id", "VARCHAR NOT NULL", "BullPhish ID organization id."),
            _c(
                "billing_type",
                "VARCHAR NOT NULL",
                "bullphish_id.<module>.<per_organization|per_user>.",
            ),
            _c(
                "units", "BIGINT NOT NULL", "0/1 for per_organization, active targets for per_user."
            ),
            _c(
                "subscription_type",
                "VARCHAR NOT NULL",
                "The partner's subscription as of the date.",
            ),
            RUN_ID,
            _c("computed_at", "TIMESTAMPTZ NOT NULL", "When the metric was computed."),
        ),
        ("usage_date", "partner_id", "organization_id", "billing_type"),
    ),
    Table(
        "ops.outbox",
        "Every batch of metrics to send to KaseyaOne, written before it is sent: pending until "
        "KaseyaOne answers, so that a crash re-sends the same Idempotency-Key (a replay).",
        (
            _c(
                "idempotency_key",
                "VARCHAR NOT NULL",
                "The Idempotency-Key, derived from the content.",
            ),
            USAGE_DATE,
            PARTNER_ID,
            _c(
                "batch_no",
                "INTEGER NOT NULL",
                "0-based batch number within the partner-date's send.",
            ),
            _c("payload", "JSON NOT NULL", "The UsageBatch body (ids and numbers only)."),
            _c("metrics", "INTEGER NOT NULL", "Number of metrics in the batch."),
            _c("status", "VARCHAR NOT NULL", "pending, acknowledged or failed."),
            _c("attempts", "INTEGER NOT NULL", "Send attempts by runs (each may retry inside)."),
            _c("http_status", "INTEGER", "HTTP status of KaseyaOne's last answer."),
            _c("accepted", "INTEGER", "Metrics KaseyaOne accepted."),
            _c("rejected", "INTEGER", "Metrics KaseyaOne rejected."),
            _c("replayed", "BOOLEAN", "KaseyaOne answered with a replay of an earlier send."),
            _c("error", "VARCHAR", "The final error, for a failed batch."),
            _c("created_at", "TIMESTAMPTZ NOT NULL", "When the batch was written."),
            _c("answered_at", "TIMESTAMPTZ", "When KaseyaOne's answer was recorded."),
            RUN_ID,
        ),
        ("idempotency_key",),
    ),
    Table(
        "ops.rejected_metrics",
        "Each metric KaseyaOne rejected, with its reason.",
        (
            _c("idempotency_key", "VARCHAR NOT NULL", "The batch (ops.outbox)."),
            _c("metric_index", "INTEGER NOT NULL", "Index of the metric in the batch."),
            USAGE_DATE,
            PARTNER_ID,
            _c("organization_id", "VARCHAR", "Organization of the rejected metric."),
            _c("billing_type", "VARCHAR", "Billing type of the rejected metric."),
            _c("units", "BIGINT", "Units of the rejected metric."),
            _c("reason", "VARCHAR NOT NULL", "KaseyaOne's reason."),
            _c("recorded_at", "TIMESTAMPTZ NOT NULL", "When recorded."),
        ),
        ("idempotency_key", "metric_index"),
    ),
    Table(
        "ops.acknowledged_metrics",
        "KaseyaOne's last answer per upsert key: the units sent, and whether KaseyaOne accepted "
        "or rejected them. A run sends only metrics whose units differ from these; accepted "
        "rows are what KaseyaOne holds.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("organization_id", "VARCHAR NOT NULL", "Organization id."),
            _c("billing_type", "VARCHAR NOT NULL", "Billing type."),
            _c("units", "BIGINT NOT NULL", "Units sent."),
            _c(
                "accepted",
                "BOOLEAN NOT NULL",
                "True if KaseyaOne stored them, false if it rejected them.",
            ),
            _c("rejected_reason", "VARCHAR", "KaseyaOne's reason, for a rejected metric."),
            _c("idempotency_key", "VARCHAR NOT NULL", "The batch that sent them."),
            _c("acknowledged_at", "TIMESTAMPTZ NOT NULL", "When KaseyaOne's answer was recorded."),
        ),
        ("usage_date", "partner_id", "organization_id", "billing_type"),
    ),
    Table(
        "ops.mapping_fetches",
        "The last successful fetch of each partner's organization mappings from KaseyaOne "
        "(a failed fetch leaves the previous one in place and is only logged).",
        (
            _c("partner_id", "VARCHAR NOT NULL", "BullPhish ID partner (MSP) id."),
            _c(
                "status",
                "VARCHAR NOT NULL",
                "linked (mappings fetched) or not_linked (KaseyaOne answered 404: the partner "
                "is not linked, so nothing of it is mapped).",
            ),
            _c("mappings", "INTEGER NOT NULL", "Mappings KaseyaOne returned."),
            _c("fetched_at", "TIMESTAMPTZ NOT NULL", "When they were fetched."),
            RUN_ID,
        ),
        ("partner_id",),
    ),
    Table(
        "ops.organization_mappings",
        "KaseyaOne's organization mappings: which BullPhish ID organization the partner's PSA "
        "invoices as which PSA company. A billed organization not listed here is unmapped "
        "(main.unmapped_organizations). Replaced per partner on each fetch.",
        (
            PARTNER_ID,
            _c(
                "organization_id",
                "VARCHAR NOT NULL",
                "BullPhish ID organization id (module_organization_id).",
            ),
            _c("psa", "VARCHAR", "autotask or bms."),
            _c("psa_company_id", "VARCHAR", "The PSA company the organization is mapped to."),
            _c("psa_company_name", "VARCHAR", "That company's name in the PSA."),
            _c("fetched_at", "TIMESTAMPTZ NOT NULL", "When the mapping was fetched."),
            RUN_ID,
        ),
        ("partner_id", "organization_id"),
    ),
    Table(
        "ops.notable_changes",
        "Notable changes of a usage date against the previous day's metrics, per partner, "
        "organization and billing type: per-user counts that moved by more than "
        "BILLING_NOTABLE_CHANGE (share, default 20%) and at least BILLING_NOTABLE_MIN_USERS "
        "(default 5), and modules switched on or off. Replaced per partner-date by each run "
        "that computes its metrics.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("organization_id", "VARCHAR NOT NULL", "BullPhish ID organization id."),
            _c("billing_type", "VARCHAR NOT NULL", "The billing type that moved."),
            _c(
                "change",
                "VARCHAR NOT NULL",
                "users_up, users_down (per-user count moved), module_on or module_off.",
            ),
            _c("previous_units", "BIGINT", "Units on the previous day (compared_with)."),
            _c("units", "BIGINT", "Units on usage_date."),
            _c(
                "change_share",
                "DOUBLE",
                "(units - previous_units) / previous_units; NULL when previous_units is 0.",
            ),
            _c("compared_with", "DATE NOT NULL", "The previous day: usage_date - 1."),
            RUN_ID,
            _c("detected_at", "TIMESTAMPTZ NOT NULL", "When the change was detected."),
        ),
        ("usage_date", "partner_id", "organization_id", "billing_type"),
    ),
    Table(
        "ops.reconciliation",
        "Every reconciliation with KaseyaOne: one row per check of a partner-date, comparing "
        "what KaseyaOne holds (GET /v1/billing/usage) with what it acknowledged "
        "(ops.acknowledged_metrics, accepted rows), with the counts per result. The "
        "differences themselves are in ops.reconciliation_differences.",
        (
            _c(
                "check_id",
                "VARCHAR NOT NULL",
                "The reconciliation pass (one per reconcile task or command) the check belongs to.",
            ),
            USAGE_DATE,
            PARTNER_ID,
            _c(
                "status",
                "VARCHAR NOT NULL",
                "clean (every metric matches), differences, or failed (KaseyaOne could not be "
                "read: error says why; nothing compared).",
            ),
            _c("metrics_acknowledged", "INTEGER", "Metrics KaseyaOne acknowledged, per us."),
            _c("metrics_at_kaseyaone", "INTEGER", "Metrics KaseyaOne holds for the partner-date."),
            _c("matched", "INTEGER", "Metrics held with the units acknowledged (match)."),
            _c("missing", "INTEGER", "Acknowledged metrics KaseyaOne no longer holds."),
            _c("differing", "INTEGER", "Metrics KaseyaOne holds with other units (differs)."),
            _c("unexpected", "INTEGER", "Metrics KaseyaOne holds that we never acknowledged."),
            _c("error", "VARCHAR", "Why the check failed; NULL otherwise."),
            RUN_ID,
            _c("checked_at", "TIMESTAMPTZ NOT NULL", "When KaseyaOne was read."),
        ),
        ("check_id", "usage_date", "partner_id"),
    ),
    Table(
        "ops.reconciliation_differences",
        "Each metric a reconciliation found not as acknowledged: missing_at_kaseyaone, differs "
        "or unexpected_at_kaseyaone, with both sides' units. Matches are only counted "
        "(ops.reconciliation).",
        (
            _c("check_id", "VARCHAR NOT NULL", "The check (ops.reconciliation)."),
            USAGE_DATE,
            PARTNER_ID,
            _c("organization_id", "VARCHAR NOT NULL", "BullPhish ID organization id."),
            _c("billing_type", "VARCHAR NOT NULL", "Billing type."),
            _c(
                "difference",
                "VARCHAR NOT NULL",
                "missing_at_kaseyaone, differs or unexpected_at_kaseyaone.",
            ),
            _c(
                "acknowledged_units",
                "BIGINT",
                "Units KaseyaOne acknowledged; NULL for unexpected_at_kaseyaone.",
            ),
            _c(
                "kaseyaone_units",
                "BIGINT",
                "Units KaseyaOne holds; NULL for missing_at_kaseyaone.",
            ),
            _c(
                "kaseyaone_received_at",
                "TIMESTAMPTZ",
                "KaseyaOne's received_at of the metric it holds; NULL when missing.",
            ),
            _c("checked_at", "TIMESTAMPTZ NOT NULL", "When KaseyaOne was read."),
            _c(
                "repaired_by",
                "VARCHAR",
                "For missing_at_kaseyaone or differs: the Idempotency-Key of the batch "
                "(ops.outbox) that re-sent the acknowledged units, once, in the next daily run; "
                "NULL until then, and always for unexpected_at_kaseyaone (never deleted).",
            ),
            _c(
                "repaired_at",
                "TIMESTAMPTZ",
                "When the re-send was written to the outbox (its delivery: ops.outbox.status).",
            ),
        ),
        ("check_id", "usage_date", "partner_id", "organization_id", "billing_type"),
    ),
    Table(
        "ops.normalized_values",
        "Values of records that were kept, and counted, but stored otherwise than served, "
        "with the reason: a date-time before year 1 (such as 0000-01-01T00:00:00Z) names no "
        "real day and is stored as null. Replaced with the records' snapshot.",
        (
            USAGE_DATE,
            _c(
                "partner_id", "VARCHAR", "Partner the record belongs to (a partner record: itself)."
            ),
            _c("entity", "VARCHAR NOT NULL", "partner, organization or target."),
            _c("record_id", "VARCHAR", "The record's id."),
            PAGE_NO,
            PAGE_ROW,
            _c("reason", "VARCHAR NOT NULL", "The field, what was wrong with it, what was stored."),
            RUN_ID,
            _c("recorded_at", "TIMESTAMPTZ NOT NULL", "When the row was written."),
        ),
    ),
    Table(
        "ops.target_fates",
        "What happened to each partner-date's target records, counted per organization and "
        "reason (rules 2, 6, 7; first match wins): active, inactive, exact duplicate collapsed, "
        "conflicting duplicate, quarantined, unknown organization, organization held or "
        "archived; records quarantined at validation with organization_id NULL. Replaced per "
        "partner-date by each run that evaluates it; behind the view metric_explanations.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c(
                "organization_id",
                "VARCHAR",
                "The organization the records name; NULL for records quarantined at validation.",
            ),
            _c("kind", "VARCHAR NOT NULL", "What happened to the records (see the table)."),
            _c("reason", "VARCHAR NOT NULL", "kind, with the quarantine's reason if any."),
            _c("records", "BIGINT NOT NULL", "Target records (copies counted)."),
            RUN_ID,
            _c("computed_at", "TIMESTAMPTZ NOT NULL", "When counted."),
        ),
    ),
    Table(
        "ops.stale_targets",
        "Per usage date and billed organization with any: its active targets (as counted for "
        "billing: not quarantined, each id once) whose updated_at is older than "
        "BILLING_STALE_DAYS (default 180) before the usage date, and those whose updated_at is "
        "unknown (null). Billing does not change: a warning to clean up before the invoice. "
        "Replaced per partner-date by each run that computes its metrics.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("organization_id", "VARCHAR NOT NULL", "BullPhish ID organization id."),
            _c(
                "subscription_type",
                "VARCHAR NOT NULL",
                "The partner's subscription as of the date.",
            ),
            _c("active_targets", "BIGINT NOT NULL", "Active targets counted for the organization."),
            _c(
                "stale_targets",
                "BIGINT NOT NULL",
                "Of those, updated before usage_date - stale_days (00:00 UTC).",
            ),
            _c("undated_targets", "BIGINT NOT NULL", "Of those, with no updated_at (normalized)."),
            _c("oldest_updated_at", "TIMESTAMPTZ", "The oldest updated_at of the stale ones."),
            _c("stale_days", "INTEGER NOT NULL", "BILLING_STALE_DAYS when computed."),
            RUN_ID,
            _c("computed_at", "TIMESTAMPTZ NOT NULL", "When computed."),
        ),
        ("usage_date", "partner_id", "organization_id"),
    ),
    Table(
        "ops.raw_retention",
        "Every target snapshot dropped by BILLING_RAW_RETENTION_DAYS: one row per partner-date "
        "whose raw.targets rows a run deleted at its end, written in the same transaction as "
        "the delete (so a crash leaves both or neither). Only raw.targets is dropped: the "
        "counts (ops.target_fates, metric_explanations), the metrics and every other table "
        "stay. A partner-date extracted again after its drop (ops.extractions.extracted_at "
        "later than dropped_at) has a snapshot again, until the next drop.",
        (
            USAGE_DATE,
            PARTNER_ID,
            _c("targets_dropped", "BIGINT NOT NULL", "raw.targets rows deleted (0: none held)."),
            _c(
                "retention_days",
                "INTEGER NOT NULL",
                "BILLING_RAW_RETENTION_DAYS of the run that dropped it.",
            ),
            _c(
                "kept_from",
                "DATE NOT NULL",
                "The oldest usage date that run kept: yesterday (UTC) - (retention_days - 1).",
            ),
            _c("dropped_at", "TIMESTAMPTZ NOT NULL", "When the rows were deleted."),
            RUN_ID,
        ),
        ("usage_date", "partner_id", "dropped_at"),
    ),
)

ANALYTICS_MARKER = Table(
    "ops.analytics_file",
    "Marks this file as the analysts' copy of a bullphish-billing warehouse, published after "
    "each run and replaced whole by the next one (publishing replaces no file without this "
    "table). One row.",
    (
        _c("published_at", "TIMESTAMPTZ NOT NULL", "When this copy was published."),
        _c("warehouse", "VARCHAR", "The warehouse file it is a copy of."),
    ),
)
"""Not part of the warehouse: `publish` adds it to the analysts' file."""

SCHEMAS = ("raw", "ops")
OUR_NAMES = frozenset({t.name for t in TABLES} | {v.name for v in VIEWS})


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_table(con: duckdb.DuckDBPyConnection, table: Table, *, keys: bool = True) -> None:
    """Create `table` if it does not exist, with its comments."""
    con.execute(table.ddl(keys))
    con.execute(f"COMMENT ON TABLE {table.name} IS {_quote(table.comment)}")
    for col in table.columns:
        con.execute(f"COMMENT ON COLUMN {table.name}.{col.name} IS {_quote(col.comment)}")


# ------------------------------------------------------------------ the shape of a file
@dataclass(frozen=True)
class Shape:
    """A table or view as the file's catalog describes it."""

    kind: str  # table or view
    columns: tuple[tuple[str, str], ...]  # (name, type), in order
    primary_key: bool = False


def catalog(con: duckdb.DuckDBPyConnection) -> dict[str, Shape]:
    """Every table and view of the connection's database, by `schema.name` (lower case). Reads
    the catalog only: nothing is written."""
    here = "database_name = current_database()"
    keyed = dict(
        con.execute(
            f"SELECT lower(schema_name || '.' || table_name), has_primary_key "
            f"FROM duckdb_tables() WHERE {here}"
        ).fetchall()
    )
    rows = con.execute(
        f"SELECT lower(schema_name || '.' || table_name), "
        f"list([column_name, data_type] ORDER BY column_index) "
        f"FROM duckdb_columns() WHERE {here} GROUP BY ALL"
    ).fetchall()
    return {
        name: Shape(
            "table" if name in keyed else "view",
            tuple((c, t) for c, t in columns),
            bool(keyed.get(name)),
        )
        for name, columns in rows
    }
