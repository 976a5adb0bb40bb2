"""Where the API contracts are: the repo's own copy, which tests and the sandbox keep to, and
the shared originals they were copied from (only on the team's machines)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "docs" / "contracts"
SHARED_CONTRACTS = REPO.parent / "shared" / "contracts"
