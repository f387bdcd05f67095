"""``[tool.insitu]``: the metric keys and resources an app declares (the code hash covers
them); bad declarations are refused naming the key."""

from __future__ import annotations

import pytest

from insitu.errors import InsituError
from insitu.flower import app_from_module, read_app
from insitu.flower.declaration import parse_declaration


def test_demo_app_declares_its_metric_keys() -> None:
    decl = read_app(app_from_module("insitu.apps.breast_cancer")).declaration
    assert {"train-loss", "eval-acc", "num-examples"} <= decl.metric_keys
    assert decl.metric_records == frozenset({"metrics"})


def test_an_app_without_a_declaration_may_send_only_num_examples() -> None:
    decl = parse_declaration({}, where="p")
    assert decl.metric_keys == frozenset({"num-examples"})


@pytest.mark.parametrize(("table", "needle"), [
    ({"metrics": "train-loss"}, "must be a list of strings"),
    ({"metrics": ["ok", 3]}, "must be a list of strings"),
    ({"metrics": ["has space"]}, "not a plain name"),
    ({"metrics": ["x" * 65]}, "not a plain name"),
    ({"metrics": [f"k{i}" for i in range(300)]}, "over 256"),
    ({"metric-records": ["bad name!"]}, "not a plain name"),
    ({"secret-keys": []}, "unknown [tool.insitu] key"),
    ({"resources": {"memory_mb": -1}}, "memory_mb must be > 0"),
])
def test_bad_declarations_are_refused(table: dict[str, object], needle: str) -> None:
    with pytest.raises(InsituError) as err:
        parse_declaration(table, where="app/pyproject.toml")
    assert needle in err.value.detail and "app/pyproject.toml" in err.value.detail
