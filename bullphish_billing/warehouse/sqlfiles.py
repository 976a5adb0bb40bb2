"""The SQL of the warehouse's views and of the billing rules, read from `.sql` files.

The files live in `bullphish_billing/warehouse/sql/` (package data, so they ship in a wheel and
in an editable install alike) and are read with importlib.resources:

- `sql/views/<view>.sql`: one analyst view each, `CREATE OR REPLACE VIEW` then its `COMMENT ON`
  documentation (`views.py` runs them);
- `sql/rules/<statement>.sql`: one statement of the billing rules each (`billing_rules.py`).
- `sql/notable/detect.sql`: the notable changes of a date (`notable.py`).
- `sql/publish/*.sql`: what changed since the last analysts' file (`publish.py`).

Values always travel as query parameters (`$d`, `$p`, `$run`, ...). A file that serves several
entities is a template whose `{placeholders}` name identifiers only (a table, the entity, its
content columns), filled by `template` from the caller's constants, never from data.
"""

from __future__ import annotations

import functools
import string
from importlib.resources import files


@functools.cache
def text(name: str) -> str:
    """The SQL of `sql/<name>.sql`, e.g. `text("views/run_history")`."""
    path = files("bullphish_billing")
    for part in ["warehouse", "sql", *f"{name}.sql".split("/")]:
        path = path.joinpath(part)
    return path.read_text(encoding="utf-8")


def template(name: str, **identifiers: str) -> str:
    """The SQL of the template `sql/<name>.sql` with its `{placeholders}` filled; every
    placeholder must be given, and every identifier given must be used. (Not cached: some
    identifiers, such as a publish's ATTACH alias, differ on every call.)"""
    sql = text(name)
    wanted = {field for _, field, _, _ in string.Formatter().parse(sql) if field}
    if wanted != set(identifiers):
        raise KeyError(f"{name}.sql wants {sorted(wanted)}, was given {sorted(identifiers)}")
    return sql.format(**identifiers)
