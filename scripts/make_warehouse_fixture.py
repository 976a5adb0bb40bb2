"""Write the warehouse fixture of tests/integration/test_migrations.py with an older version of
this program (default: main at b9acdc2, schema version 1, before the SQL moved to .sql files).

    .venv/bin/python scripts/make_warehouse_fixture.py [--commit b9acdc2]

It exports that commit with `git archive` into a temporary folder, and there, with this venv's
Python and that commit's code alone (PYTHONPATH), runs the real daily flow (`bullphish-billing
run`, Prefect's ephemeral server) against a tiny sandbox (8 partners, 3 organizations of 4
targets each, its `today` fixed) for two usage dates. The warehouse it wrote is copied to
tests/fixtures/warehouse-<commit>.duckdb.gz (gzip: the file is mostly empty 256 KiB
blocks, about 8 MB, 50 KB packed), with what the test checks after an upgrade in
tests/fixtures/warehouse-<commit>.json: every table's row count and a digest of its rows, and
each view's SQL and comment as that version stored them. Offline, about a minute.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DATES = ("2026-11-21", "2026-11-22")
SANDBOX = {
    "seed": 7,
    "partners": 8,
    "organizations_per_partner": 3,
    "targets_per_organization": 4,
    "today": "2026-11-23",
}

# Runs inside the exported commit, with its code only.
INNER = """
import datetime as dt, json, os, sys
import bullphish_billing
assert bullphish_billing.__file__.startswith(os.getcwd()), bullphish_billing.__file__
from bullphish_billing.cli import main
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

spec = json.loads(sys.argv[1])
today = dt.date.fromisoformat(spec["sandbox"]["today"])
config = SandboxConfig(**(spec["sandbox"] | {"today": today}))
with RunningSandbox(config) as sandbox:
    os.environ.update({
        "BULLPHISH_API_URL": sandbox.bullphish_url,
        "BULLPHISH_API_TOKEN": config.bullphish_token,
        "KASEYAONE_API_URL": sandbox.kaseyaone_url,
        "KASEYAONE_CLIENT_ID": config.kaseyaone_client_id,
        "KASEYAONE_CLIENT_SECRET": config.kaseyaone_client_secret,
        "BILLING_WAREHOUSE": spec["warehouse"],
    })
    codes = [main(["run", "--date", day]) for day in spec["dates"]]
print("EXIT CODES", codes)
"""


def table_facts(path: Path) -> dict:
    """Every table's row count and a digest of its rows (sorted, as text, timestamps in UTC),
    and every view's SQL and comment as the file stores them."""
    with duckdb.connect(str(path), read_only=True) as con:
        return {"tables": tables(con), "views": views(con)}


def tables(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    con.execute("SET TimeZone = 'UTC'")
    names = [
        f"{schema}.{name}"
        for schema, name in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() ORDER BY ALL"
        ).fetchall()
    ]
    facts = {}
    for name in names:
        rows = con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
        digest = hashlib.sha256("\n".join(map(repr, rows)).encode()).hexdigest()
        facts[name] = {"rows": len(rows), "sha256": digest}
    return facts


def views(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    return {
        f"{schema}.{name}": {"sql": sql, "comment": comment}
        for schema, name, sql, comment in con.execute(
            "SELECT schema_name, view_name, sql, comment FROM duckdb_views() "
            "WHERE database_name = current_database() AND NOT internal ORDER BY ALL"
        ).fetchall()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="b9acdc2")
    ns = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short=7", ns.commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bpb-fixture-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        archive = subprocess.run(
            ["git", "archive", commit], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        warehouse = Path(tmp) / "data" / "warehouse.duckdb"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BULLPHISH_", "KASEYAONE_", "BILLING_", "PREFECT_"))
        }
        env |= {
            "PYTHONPATH": str(code),
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        spec = {"sandbox": SANDBOX, "dates": DATES, "warehouse": str(warehouse)}
        done = subprocess.run(
            [sys.executable, "-c", INNER, json.dumps(spec)],
            cwd=code,
            env=env,
            text=True,
            capture_output=True,
        )
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        if done.returncode != 0 or "EXIT CODES" not in done.stdout:
            return 1
        if Path(f"{warehouse}.wal").exists():
            print("the warehouse was not checkpointed", file=sys.stderr)
            return 1
        manifest = {
            "commit": commit,
            "made_by": "scripts/make_warehouse_fixture.py",
            "sandbox": SANDBOX,
            "usage_dates": DATES,
            "bytes": warehouse.stat().st_size,
            **table_facts(warehouse),
        }
        FIXTURES.mkdir(parents=True, exist_ok=True)
        target = FIXTURES / f"warehouse-{commit}.duckdb.gz"
        with (
            open(warehouse, "rb") as raw,
            open(target, "wb") as out,
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as packed,
        ):
            shutil.copyfileobj(raw, packed)
    (FIXTURES / f"warehouse-{commit}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{target} ({target.stat().st_size} bytes; {manifest['bytes']} unpacked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
