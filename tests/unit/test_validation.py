"""Per-record validation: both paths (fast Arrow, exact object) give the same answer, and a
batch with one value of the wrong type is still split record by record."""

from __future__ import annotations

import pandas as pd
import pytest
from warehouse_builder import org, partner, target

from bullphish_billing.validation import ORGANIZATION, PARTNER, TARGET, validate_records


def both(entity, records, **kw):
    positions = [(0, i) for i in range(len(records))]
    return (
        validate_records(entity, records, positions, **kw),
        validate_records(entity, records, positions, exact=True, **kw),
    )


def same(a, b) -> None:
    pd.testing.assert_frame_equal(a.bad, b.bad, check_dtype=False)
    pd.testing.assert_frame_equal(
        a.good.astype(str).reset_index(drop=True), b.good.astype(str).reset_index(drop=True)
    )


CASES = [
    (
        TARGET,
        [
            target("t_1", "o_1"),
            target("t_2", "o_1", status="deleted"),
            target("t_3", "o_1", updated_at="2026-13-01T00:00:00Z"),
            target("bad id", "o_1"),
            target("t_5", "o_1", first_name=None),
            target("t_6", "o_1", status=None),
            target("t_7", "o_1", updated_at="2026-11-01"),
        ],
        {},
    ),
    (
        ORGANIZATION,
        [
            org("o_1", "p_1"),
            org("o_2", "p_2"),
            org("o_3", "p_1", status="gone"),
            org("o_4", "p_1", name=""),
            org("o_5", "p_1", parent="o_1"),
            org("o_6", "p_1", name="x" * 201),
        ],
        {"expected_partner_id": "p_1"},
    ),
    (
        PARTNER,
        [
            partner("p_1"),
            partner("p_2", psa=None),
            partner("p_3", psa="halo"),
            partner("p_4", sub="per_seat"),
            partner("p 5"),
        ],
        {},
    ),
]


@pytest.mark.parametrize(("entity", "records", "kw"), CASES, ids=["target", "org", "partner"])
def test_the_fast_and_the_exact_path_agree(entity, records, kw):
    fast, exact = both(entity, records, **kw)
    same(fast, exact)
    assert len(fast.good) + len(fast.bad) == len(records)  # nothing dropped
    assert len(fast.bad) >= 3


def test_one_wrong_type_sends_the_batch_down_the_exact_path_record_by_record():
    records = [target(f"t_{i}", "o_1") for i in range(50)] + [target("t_x", "o_1", status=1)]
    batch = validate_records(TARGET, records, [(0, i) for i in range(len(records))])
    assert len(batch.good) == 50
    assert batch.bad.to_dict("records") == [
        {"record_id": "t_x", "page_no": 0, "page_row": 50, "reason": "status: not a string"}
    ]


def test_good_rows_keep_no_personal_data_and_have_warehouse_types():
    fast, exact = both(TARGET, [target("t_1", "o_1")])
    for batch in (fast, exact):
        assert list(batch.good.columns) == [
            "id",
            "organization_id",
            "status",
            "updated_at",
            "page_no",
            "page_row",
        ]
        assert str(batch.good["updated_at"].dtype).startswith("timestamp[us, tz=UTC]")
