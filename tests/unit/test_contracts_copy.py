"""The repo's contracts are the shared originals, byte for byte. Only the team's machines have
the originals beside the checkout: elsewhere there is nothing to compare, and the test skips."""

from __future__ import annotations

import pytest
from contracts import CONTRACTS, SHARED_CONTRACTS


def test_the_repo_holds_both_contracts():
    names = sorted(p.name for p in CONTRACTS.glob("*.openapi.yaml"))
    assert names == ["bullphish-id.openapi.yaml", "kaseyaone-billing.openapi.yaml"]


@pytest.mark.skipif(not SHARED_CONTRACTS.is_dir(), reason="no ../shared/contracts beside the repo")
def test_the_repo_contracts_are_the_shared_ones_byte_for_byte():
    shared = {p.name: p.read_bytes() for p in SHARED_CONTRACTS.glob("*.openapi.yaml")}
    ours = {p.name: p.read_bytes() for p in CONTRACTS.glob("*.openapi.yaml")}
    assert shared, "../shared/contracts holds no contract"
    assert sorted(ours) == sorted(shared)
    drifted = [name for name in shared if ours[name] != shared[name]]
    assert not drifted, f"docs/contracts differs from ../shared/contracts: {drifted}"
