"""Benchmark scales: sandbox sizes (partners x organizations per partner x targets per org)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    partners: int
    organizations_per_partner: int
    targets_per_organization: int

    @property
    def targets(self) -> int:
        return self.partners * self.organizations_per_partner * self.targets_per_organization

    @property
    def organizations(self) -> int:
        return self.partners * self.organizations_per_partner


SCALES = {
    "tiny": Scale("tiny", 10, 4, 10),  # smoke test: 400 targets
    "dlt": Scale("dlt", 10, 100, 100),  # 100,000 targets: what dlt is compared at by default
    "S": Scale("S", 100, 100, 100),  # 10,000 organizations, 1,000,000 targets
    "L": Scale("L", 100, 100, 1000),  # 10,000,000 targets
}
