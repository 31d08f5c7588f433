"""Which configs fuse: the group key and the check that names the offending field."""

from __future__ import annotations

import re

import pytest

from tests.training.support import make_config
from worker.training.fusion import (
    MEMBER_FIELDS,
    NotFusableError,
    check_fusable,
    fusable_groups,
    fusion_key,
)


def test_member_fields_do_not_change_the_key() -> None:
    a = make_config()
    b = make_config(
        {
            "name": "other",
            "training": {"seed": 7},
            "optimizer": {"learning_rate": 0.5, "momentum": 0.9, "weight_decay": 0.1},
            "model": {
                "init": "normal",
                "init_std": 0.1,
                "batch_norm": {"decay": 0.9, "epsilon": 0.1},
            },
            "clipping": {"mode": "value", "threshold": 3.0},
        }
    )
    assert fusion_key(a) == fusion_key(b)
    check_fusable([a, b])
    assert len(MEMBER_FIELDS) == 11


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"hidden_layers": [32, 8]}}, "model.hidden_layers"),
        ({"model": {"activation": "relu"}}, "model.activation"),
        ({"model": {"batch_norm": {"scale": True}}}, "model.batch_norm.scale"),
        (
            {"model": {"batch_norm": {"placement": "after_activation"}}},
            "model.batch_norm.placement",
        ),
        ({"training": {"batch_size": 32}}, "training.batch_size"),
        ({"training": {"epochs": 3}}, "training.epochs"),
        ({"training": {"max_steps": 10}}, "training.max_steps"),
        ({"training": {"log_every_steps": 2}}, "training.log_every_steps"),
        ({"optimizer": {"name": "adam"}}, "optimizer.name"),
        ({"dataset": {"validation_size": 0.2}}, "dataset.validation_size"),
        ({"dataset": {"standardize": False}}, "dataset.standardize"),
        ({"resources": {"device": "auto"}}, "resources.device"),
    ],
)
def test_a_shared_field_that_differs_is_named(change: dict[str, object], field: str) -> None:
    a, b = make_config(), make_config(change)
    assert fusion_key(a) != fusion_key(b)
    message = re.escape(f"member 1 differs from member 0 in '{field}'")
    with pytest.raises(NotFusableError, match=message):
        check_fusable([a, b])


def test_an_empty_group_is_refused() -> None:
    with pytest.raises(NotFusableError):
        check_fusable([])


def test_groups_split_by_key_and_size_in_input_order() -> None:
    small, wide = make_config(), make_config({"model": {"hidden_layers": [64]}})
    cfgs = [small, wide, small, small, wide, small]
    assert fusable_groups(cfgs, max_size=3) == [[0, 2, 3], [5], [1, 4]]
    assert fusable_groups(cfgs, max_size=1) == [[0], [2], [3], [5], [1], [4]]
    with pytest.raises(ValueError):
        fusable_groups(cfgs, max_size=0)
