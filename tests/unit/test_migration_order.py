"""The numbered migrations and the view re-creation of `migrations.migrate`, on small files: the
order migrations are applied in (a new file gets all, a file at version N the rest), the
refusals (a newer version, a foreign shape) before anything is written, and the views
re-created when their SQL changed and only then. The upgrade of a real warehouse written by
main is tests/integration/test_migrations.py."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import duckdb
import pytest

from bullphish_billing.warehouse import migrations, schema, sqlfiles
from bullphish_billing.warehouse.migrations import (
    Migration,
    SchemaShapeError,
    SchemaVersionError,
    migrate,
)
from bullphish_billing.warehouse.views import VIEWS

ROOT = Path(__file__).resolve().parents[2]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions(path: Path) -> list[int]:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT version FROM ops.schema_version ORDER BY applied_at, version")
        return [v for (v,) in rows.fetchall()]


def migrated(path: Path, *, keys: bool = True) -> Path:
    with duckdb.connect(str(path)) as con:
        migrate(con, keys=keys)
    return path


def _clear_caches() -> None:
    migrations._expected.cache_clear()
    migrations._current_view_texts.cache_clear()


@pytest.fixture
def more_migrations(monkeypatch):
    """`activate()` makes this program pretend to have migrations 2 and 3 (each creating a
    table) after the real ones, and returns the versions they applied to files, in order."""
    applied: list[int] = []

    def step(version: int) -> Migration:
        def apply(con: duckdb.DuckDBPyConnection, keys: bool) -> None:
            if con.execute("SELECT current_database()").fetchall() != [("memory",)]:
                applied.append(version)  # not the in-memory reference of the shapes
            con.execute(f"CREATE TABLE ops.example_{version} (note VARCHAR)")

        return Migration(version, f"example {version}", apply)

    def activate() -> list[int]:
        real = migrations.MIGRATIONS
        extra = (step(migrations.LATEST + 1), step(migrations.LATEST + 2))
        monkeypatch.setattr(migrations, "MIGRATIONS", real + extra)
        monkeypatch.setattr(migrations, "SCHEMA_VERSION", migrations.LATEST + 2)
        _clear_caches()
        return applied

    yield activate
    monkeypatch.undo()
    _clear_caches()


def test_migrations_are_numbered_from_1_in_order_and_the_latest_is_the_schema_version():
    assert [m.version for m in migrations.MIGRATIONS] == list(
        range(1, len(migrations.MIGRATIONS) + 1)
    )
    assert migrations.SCHEMA_VERSION == migrations.LATEST == migrations.MIGRATIONS[-1].version


@pytest.mark.parametrize("keys", [True, False])
def test_a_new_warehouse_gets_every_migration_and_every_view(tmp_path, keys):
    path = migrated(tmp_path / "new.duckdb", keys=keys)
    assert versions(path) == [m.version for m in migrations.MIGRATIONS]
    with duckdb.connect(str(path)) as con:
        assert migrations.shape_problem(schema.catalog(con), keys=keys) is None
        assert migrations.stale_views(con) == ()
        keyed = con.execute(
            "SELECT count(*) FILTER (has_primary_key) FROM duckdb_tables()"
        ).fetchall()
        assert (keyed[0][0] > 0) is keys
        for view in VIEWS:
            con.execute(f"FROM {view.name}").fetchall()


def test_the_migrations_are_applied_in_order_a_new_file_all_of_them(tmp_path, more_migrations):
    applied = more_migrations()
    path = migrated(tmp_path / "new.duckdb")
    latest = migrations.LATEST
    assert applied == [latest + 1, latest + 2]
    assert versions(path) == list(range(1, latest + 3))


def test_a_warehouse_at_version_n_gets_only_the_migrations_above_n(tmp_path, more_migrations):
    path = migrated(tmp_path / "old.duckdb")  # at the real latest version
    before = versions(path)
    applied = more_migrations()
    with duckdb.connect(str(path)) as con:
        assert migrate(con) == migrations.LATEST + 2
        con.execute(f"FROM ops.example_{migrations.LATEST + 2}")
    assert applied == [migrations.LATEST + 1, migrations.LATEST + 2]
    assert versions(path) == before + applied
    with duckdb.connect(str(path)) as con:  # and once there, nothing more
        assert migrate(con) == migrations.LATEST + 2
    assert applied == [migrations.LATEST + 1, migrations.LATEST + 2]


def test_a_warehouse_of_a_newer_version_is_refused_and_not_written(tmp_path):
    path = migrated(tmp_path / "newer.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("INSERT INTO ops.schema_version VALUES (?, now())", [migrations.LATEST + 1])
    before = digest(path)
    with duckdb.connect(str(path)) as con, pytest.raises(SchemaVersionError, match="newer"):
        migrate(con)
    assert digest(path) == before
    assert not Path(f"{path}.wal").exists()


FOREIGN = {
    # another program's file: no version, a table of ours with other columns
    "unversioned table": ("CREATE SCHEMA ops; CREATE TABLE ops.runs (x INTEGER)", "ops.runs"),
    # our file at version 1, then a table changed by hand
    "versioned table": ("ALTER TABLE ops.outbox DROP COLUMN error", "ops.outbox"),
    # our file at version 1, a view of ours replaced by a table
    "view as a table": (
        "DROP VIEW main.billing_changes; CREATE TABLE main.billing_changes (x INTEGER)",
        "main.billing_changes",
    ),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_file_of_a_foreign_shape_is_refused_and_left_untouched(tmp_path, case):
    sql, named = FOREIGN[case]
    path = tmp_path / "foreign.duckdb"
    if case != "unversioned table":
        migrated(path)
    with duckdb.connect(str(path)) as con:
        con.execute(sql)
    before = digest(path)
    with duckdb.connect(str(path)) as con, pytest.raises(SchemaShapeError, match=named):
        migrate(con)
    assert digest(path) == before
    assert not Path(f"{path}.wal").exists()


def test_a_view_whose_sql_changed_is_recreated_even_with_other_columns(tmp_path):
    """A warehouse holding an older definition of a view (here: other SQL, other columns,
    another comment) is ours all the same: migrate re-creates the view from its file, and
    records no new version for it."""
    path = migrated(tmp_path / "warehouse.duckdb")
    before = versions(path)
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE OR REPLACE VIEW main.run_history AS SELECT run_id, usage_date FROM ops.runs; "
            "COMMENT ON VIEW main.run_history IS 'an older run_history'"
        )
        assert [v.name for v in migrations.stale_views(con)] == ["main.run_history"]
    with duckdb.connect(str(path)) as con:
        migrate(con)
        assert migrations.stale_views(con) == ()
        assert migrations._view_texts(con) == migrations._current_view_texts()
    assert versions(path) == before


def test_a_comment_changed_is_a_view_changed(tmp_path):
    path = migrated(tmp_path / "warehouse.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("COMMENT ON COLUMN main.invoice_preview.month IS 'older words'")
        assert [v.name for v in migrations.stale_views(con)] == ["main.invoice_preview"]
        migrate(con)
        assert migrations.stale_views(con) == ()


def test_an_up_to_date_warehouse_is_not_written_to(tmp_path):
    """The views as every file reads them back equal the SQL migrate compares them with, so
    a warehouse up to date is left alone on every open (no view re-created each time)."""
    path = migrated(tmp_path / "warehouse.duckdb")
    before = digest(path)
    for _ in range(2):
        with duckdb.connect(str(path)) as con:
            assert migrations.stale_views(con) == ()
            migrate(con)
    assert digest(path) == before


def test_the_sql_files_are_package_data_and_templates_take_identifiers_only():
    """Every .sql file under warehouse/sql/ matches pyproject's package-data glob (so it ships
    in a wheel), and a template is filled with exactly its placeholders."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["bullphish_billing"]
    package = ROOT / "bullphish_billing"
    shipped = {p for glob in globs for p in package.glob(glob)}
    files = set((package / "warehouse" / "sql").rglob("*.sql"))
    assert files and files == shipped
    assert "CREATE OR REPLACE VIEW main.run_history" in sqlfiles.text("views/run_history")
    sql = sqlfiles.template("rules/records_quarantine_conflicting", table="t", content="a, b")
    assert "FROM t" in sql and "count(DISTINCT (a, b))" in sql
    with pytest.raises(KeyError):
        sqlfiles.template("rules/records_quarantine_conflicting", table="t")
