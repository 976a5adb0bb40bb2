"""Every place a run writes, as text, for the tests that search them for secrets and personal
data: what Prefect's API holds about a flow run, Prefect's database files, and every value of
every table of a DuckDB file (the warehouse, the analysts' file)."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import duckdb

from bullphish_billing.sandbox import RunningSandbox


def prefect_records(flow_run_id: UUID) -> list[str]:
    """Everything Prefect's API holds about one flow run, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert task_runs and logs and artifacts, "the run left nothing in Prefect to search"
    return [
        flow_run.model_dump_json(),
        *(t.model_dump_json() for t in task_runs),
        *(log.model_dump_json() for log in logs),
        *(a.model_dump_json() for a in artifacts),
    ]


def prefect_database_files() -> list[Path]:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    database = Path(url.split("///", 1)[1])
    return [p for p in database.parent.glob(database.name + "*") if p.is_file()]


def warehouse_text(path: Path) -> str:
    """Every value of every column of every table, as text."""
    chunks = []
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() "
            "WHERE database_name = current_database()"
        ).fetchall()
        assert tables
        for schema, table in tables:
            rows = con.execute(f"SELECT * FROM {schema}.{table}").fetchall()
            chunks.append(repr(rows))
    return "\n".join(chunks)


def record_issued_tokens(sandbox: RunningSandbox) -> list[str]:
    """The KaseyaOne access tokens the sandbox issues from now on (secrets too), as a list that
    fills as they are issued."""
    issued: list[str] = []
    issue = sandbox.kaseyaone.issue_token

    def recording(client_id: str, lifetime_s: int) -> str:
        issued.append(issue(client_id, lifetime_s))
        return issued[-1]

    sandbox.kaseyaone.issue_token = recording  # type: ignore[method-assign]
    return issued
