"""A warehouse written by main at b9acdc2 (schema version 1; tests/fixtures/README.md says how
it was made) is opened by this version: its data is intact, its schema version is the latest,
its views are those of sql/views/ and answer, and a daily run over it works."""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from flow_runs import billed

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig
from bullphish_billing.warehouse import migrations, schema
from bullphish_billing.warehouse.db import open_warehouse
from bullphish_billing.warehouse.views import VIEWS

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "warehouse-b9acdc2.duckdb.gz"
MANIFEST = json.loads(FIXTURE.with_name("warehouse-b9acdc2.json").read_text())


def _maker():
    """scripts/make_warehouse_fixture.py, whose digests the manifest holds."""
    spec = importlib.util.spec_from_file_location(
        "make_warehouse_fixture", ROOT / "scripts" / "make_warehouse_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()


@pytest.fixture
def old_warehouse(tmp_path: Path) -> Path:
    """A copy of the fixture, unpacked: the test never writes the committed file."""
    path = tmp_path / "warehouse.duckdb"
    with gzip.open(FIXTURE, "rb") as packed, open(path, "wb") as out:
        shutil.copyfileobj(packed, out)
    return path


def test_the_fixture_is_a_version_1_warehouse_with_main_s_views(old_warehouse):
    """What the upgrade starts from: version 1, and main's view SQL, of which run_history's
    differs from today's sql/views/run_history.sql (its EXCLUDE list, which DuckDB stores in no
    fixed order, became named columns), and which lacks the views added since."""
    with duckdb.connect(str(old_warehouse), read_only=True) as con:
        assert con.execute("SELECT version FROM ops.schema_version").fetchall() == [(1,)]
        assert MAKER.views(con) == MANIFEST["views"]
        assert MAKER.tables(con) == MANIFEST["tables"]
        added = [v.name for v in VIEWS if v.name not in MANIFEST["views"]]  # views since
        assert [v.name for v in migrations.stale_views(con)] == sorted(
            ["main.run_history", *added], key=[v.name for v in VIEWS].index
        )
        assert "EXCLUDE" in MANIFEST["views"]["main.run_history"]["sql"]


def test_a_warehouse_written_by_main_is_upgraded_with_its_data_intact(old_warehouse):
    with open_warehouse(old_warehouse):
        pass  # what every run does first: open, and migrate
    with duckdb.connect(str(old_warehouse), read_only=True) as con:
        facts = MAKER.tables(con)
        versions = [
            v
            for (v,) in con.execute("SELECT version FROM ops.schema_version ORDER BY 1").fetchall()
        ]
        # every table, its rows and their content as main wrote them; ops.schema_version
        # gains a row per migration above 1; the tables of later migrations are new and empty
        recorded = MANIFEST["tables"]
        assert set(recorded) == set(migrations.VERSION_1_TABLES)
        added = set(facts) - set(recorded)
        assert set(recorded) <= set(facts)
        assert added == {t.name for t in schema.TABLES} - set(recorded)
        assert all(facts[name]["rows"] == 0 for name in added), added
        for table, fact in recorded.items():
            if table != "ops.schema_version":
                assert facts[table] == fact, table
        assert versions == list(range(1, migrations.LATEST + 1))
        assert facts["ops.schema_version"]["rows"] == migrations.LATEST
        assert recorded["main.billing_metrics"]["rows"] > 0 and recorded["raw.targets"]["rows"] > 0
        # every view is today's, with its comments, and answers
        assert migrations.stale_views(con) == ()
        assert migrations._view_texts(con) == migrations._current_view_texts()
        assert (
            "EXCLUDE"
            not in con.execute(
                "SELECT sql FROM duckdb_views() WHERE view_name = 'run_history'"
            ).fetchall()[0][0]
        )
        answers = {
            view.name: con.execute(f"SELECT count(*) FROM {view.name}").fetchall()[0][0]
            for view in VIEWS
        }
        assert (
            answers["main.billing_changes"]
            == recorded["main.billing_metrics"]["rows"]
            + (
                con.execute(
                    "SELECT count(*) FROM billing_changes WHERE direction = 'stopped'"
                ).fetchall()[0][0]
            )
        )
        assert answers["main.run_history"] >= recorded["ops.partner_runs"]["rows"]
        assert answers["main.invoice_preview"] > 0
        assert migrations.shape_problem(schema.catalog(con), version=migrations.LATEST) is None
        assert migrations.shape_problem(schema.catalog(con)) is None


@pytest.mark.usefixtures("prefect_harness")
def test_a_daily_run_over_the_upgraded_warehouse_works(
    old_warehouse, configure, monkeypatch, tmp_path
):

    sandbox_config = {k: v for k, v in MANIFEST["sandbox"].items() if k != "today"}
    day = yesterday_utc()
    old_days = [dt.date.fromisoformat(d) for d in MANIFEST["usage_dates"]]
    # a retention that keeps the dates after the fixture's: its target snapshots are dropped
    # (recorded in ops.raw_retention, of migration 4), everything else of them stays
    keep = (day - max(old_days)).days
    with RunningSandbox(SandboxConfig(**sandbox_config)) as sandbox:
        configure(sandbox, BILLING_WAREHOUSE=old_warehouse, BILLING_RAW_RETENTION_DAYS=keep)
        monkeypatch.setenv("BILLING_ANALYTICS_FILE", str(tmp_path / "analytics.duckdb"))
        summary = billed(usage_date=day)
    statuses = {o.partner_id: o.status for o in summary.outcomes}
    assert statuses["p_0002"] == "delivered", statuses
    with duckdb.connect(str(old_warehouse), read_only=True) as con:
        old = con.execute(
            "SELECT count(*) FROM billing_metrics WHERE list_contains(?, usage_date)", [old_days]
        ).fetchall()[0][0]
        assert old == MANIFEST["tables"]["main.billing_metrics"]["rows"]
        new = con.execute(
            "SELECT count(*) FROM billing_metrics WHERE usage_date = ?", [day]
        ).fetchall()[0][0]
        assert new > 0
        assert con.execute("SELECT count(DISTINCT usage_date) FROM run_history").fetchall() == [
            (len(old_days) + 1,)
        ]
        changes = con.execute(
            "SELECT count(*) FROM billing_changes WHERE usage_date = ? AND partner_id = 'p_0002'",
            [day],
        ).fetchall()[0][0]
        assert changes > 0
        # the fixture's target snapshots dropped and recorded, each partner-date it extracted
        assert con.execute(
            "SELECT count(*) FROM raw.targets WHERE list_contains(?, usage_date)", [old_days]
        ).fetchall() == [(0,)]
        dropped = con.execute(
            "SELECT count(*), sum(targets_dropped), min(retention_days), max(retention_days) "
            "FROM ops.raw_retention"
        ).fetchall()[0]
        assert dropped == (
            MANIFEST["tables"]["ops.extractions"]["rows"],
            MANIFEST["tables"]["raw.targets"]["rows"],
            keep,
            keep,
        )
        assert con.execute(
            "SELECT count(*) FROM raw.targets WHERE usage_date = ?", [day]
        ).fetchall()[0][0]
        for table in ("raw.organizations", "raw.partners"):
            rows = con.execute(
                f"SELECT count(*) FROM {table} WHERE list_contains(?, usage_date)", [old_days]
            ).fetchall()[0][0]
            assert rows == MANIFEST["tables"][table]["rows"], table
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as published:
        for view in VIEWS:
            published.execute(f"FROM {view.name}").fetchall()
