"""k-anonymity: suppression of small groups, refusal with sizes and without values."""

from __future__ import annotations

import pyarrow as pa
import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.deid import enforce_k_anonymity, group_sizes


def _table(zips: list[str | None], bands: list[str]) -> pa.Table:
    return pa.table({"zip": zips, "band": bands, "x": list(range(len(zips)))})


def test_group_sizes_combine_columns_and_treat_null_as_a_value() -> None:
    table = _table(["021", "021", "021", None, None], ["30-34", "30-34", "35-39", "30-34", "30-34"])
    group, sizes = group_sizes(table, ["zip", "band"])
    assert sorted(sizes.tolist()) == [1, 2, 2]
    assert group[0] == group[1] and group[3] == group[4] and group[0] != group[3]


def test_small_groups_are_suppressed_within_the_budget() -> None:
    table = _table(["021"] * 10 + ["024"] * 10 + ["000"], ["a"] * 21)
    result = enforce_k_anonymity(table, ["zip", "band"], k=5, max_suppression_fraction=0.1)
    assert result.rows_out == 20 and not result.keep[-1]
    assert result.k_achieved == 10 and result.groups_suppressed == 1


def test_refusal_states_reason_and_sizes_but_no_values() -> None:
    zips = ["02139-SECRET"] * 3 + ["90210-SECRET"] * 2 + ["10001-SECRET"] * 7
    table = _table(zips, ["VALUE-BAND"] * len(zips))
    with pytest.raises(InsituError) as err:
        enforce_k_anonymity(table, ["zip", "band"], k=5, max_suppression_fraction=0.2)
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    message = str(err.value) + err.value.public_message()
    assert "k=5" in message and "5 of 12 rows" in message
    assert "sizes: [2, 3]" in message
    assert "SECRET" not in message and "VALUE-BAND" not in message


def test_sizes_list_is_capped() -> None:
    table = _table([f"z{i}" for i in range(100)], ["a"] * 100)
    with pytest.raises(InsituError) as err:
        enforce_k_anonymity(table, ["zip"], k=2, max_suppression_fraction=0.5)
    assert "and 75 more" in err.value.detail


def test_without_quasi_identifiers_the_table_is_one_group() -> None:
    table = _table(["a", "b", "c"], ["x", "y", "z"])
    assert enforce_k_anonymity(table, [], k=3, max_suppression_fraction=0).k_achieved == 3
    with pytest.raises(InsituError):
        enforce_k_anonymity(table, [], k=4, max_suppression_fraction=0.99)


def test_empty_and_fully_suppressed_tables_are_refused() -> None:
    with pytest.raises(InsituError):
        enforce_k_anonymity(_table([], []), ["zip"], k=1, max_suppression_fraction=1.0)
    with pytest.raises(InsituError) as err:
        enforce_k_anonymity(
            _table(["a", "b"], ["x", "x"]), ["zip"], k=2, max_suppression_fraction=1.0
        )
    assert "2 of 2 rows" in err.value.detail
