"""The study spec and its grid: paths, levels, seeds, responses, and every member validated."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from app.studies.grid import GridError, cells, expand
from app.studies.spec import StudySpec, example_spec


def spec(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(example_spec())
    body.update(changes)
    return body


def error_text(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate(body)
    return str(info.value)


def test_the_example_expands_to_cells_times_seeds() -> None:
    s = StudySpec.model_validate(spec(factors={
        "model.batch_norm.enabled": [False, True],
        "clipping": [{"mode": "none"}, {"mode": "norm", "threshold": 1.0}],
    }))
    assert s.seeds == list(range(8)) and s.n_members == 32
    assert [c.labels for c in cells(s)][:2] == [("false", "mode=none"),
                                                ("false", "mode=norm,threshold=1.0")]
    members = expand(s)
    assert len(members) == 32 and members[9].cell == 1 and members[9].seed == 1
    config = members[9].config
    assert config.clipping.mode == "norm" and config.training.seed == 1
    assert config.model.activation == "sigmoid" and not config.model.batch_norm.enabled


def test_unknown_path_names_the_nearest_valid_ones() -> None:
    text = error_text(spec(factors={"model.batchnorm.enabled": [True, False]}))
    assert "model.batchnorm.enabled" in text and "model.batch_norm.enabled" in text


def test_errors_are_located_at_the_factor_and_level() -> None:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate(spec(factors={"modl.activation": ["relu"],
                                               "clipping": [{"mode": "none"}, "norm"]}))
    assert [e["loc"] for e in info.value.errors()] == [
        ("factors", "modl.activation"), ("factors", "clipping", "levels", 1)]


@pytest.mark.parametrize(("factors", "needle"), [
    ({"training.seed": [1, 2]}, "training.seed"),
    ({"training": [{"seed": 1}, {"seed": 2}]}, "training.seed"),
    ({}, "at least 1"),
    ({"optimizer.learning_rate": []}, "at least 1"),
    ({"optimizer.learning_rate": [0.1, 0.1]}, "repeats level 0"),
    ({"optimizer.learning_rate": list(range(1, 12))}, "at most 10"),
    ({"clipping": ["norm"]}, "is a section"),
    ({"clipping.mode": [{"x": 1}]}, "not a section"),
    ({"model.batch_norm": [{"enabled": True}], "model.batch_norm.scale": [True]}, "overlap"),
    ({"optimizer.learning_rate": {"levels": [0.1, 0.2], "labels": ["a", "a"]}}, "differ"),
])
def test_bad_factors(factors: dict[str, Any], needle: str) -> None:
    assert needle in error_text(spec(factors=factors))


@pytest.mark.parametrize(("changes", "needle"), [
    ({"seeds": 0}, "between 1 and 100"),
    ({"seeds": 101}, "between 1 and 100"),
    ({"seeds": [1, 1]}, "repeat"),
    ({"seeds": True}, "seeds"),
    ({"response": {"metric": "accuracy"}}, "response.metric"),
    ({"response": {"metric": "steps_to", "of": "val_accuracy"}}, "threshold"),
    ({"response": {"metric": "steps_to", "of": "val_accuracy", "threshold": float("inf")}},
     "finite"),
    ({"response": {"metric": "steps_to", "of": "val_accuracy", "threshold": float("nan")}},
     "finite"),
    ({"response": {"metric": "final_loss", "goal": "max"}}, "goal"),
    ({"response": {"metric": "final_loss", "threshold": 0.5}}, "only to steps_to"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_seeds_and_responses(changes: dict[str, Any], needle: str) -> None:
    assert needle in error_text(spec(**changes))


def test_labels_given_or_derived() -> None:
    s = StudySpec.model_validate(spec(factors={
        "optimizer.learning_rate": {"levels": [0.01, 0.5], "labels": ["slow", "fast"]},
        "model.hidden_layers": [[100], [100, 100]],
    }, seeds=[3, 5]))
    assert s.factors["optimizer.learning_rate"].labels == ["slow", "fast"]
    assert s.factors["model.hidden_layers"].labels == ["[100]", "[100,100]"]
    assert [m.seed for m in expand(s)][:2] == [3, 5]


def test_an_invalid_cell_names_its_levels_and_the_field() -> None:
    s = StudySpec.model_validate(spec(factors={
        "model.batch_norm.enabled": [False, True], "training.batch_size": [1, 50]}))
    with pytest.raises(GridError) as info:
        expand(s)
    [error] = info.value.errors
    assert error["loc"] == ["base", "training", "batch_size"]
    assert "model.batch_norm.enabled=true, training.batch_size=1" in error["msg"]


def test_a_base_preset_is_merged_underneath() -> None:
    s = StudySpec.model_validate(spec(base={"preset": "geron-bn", "dataset": {"name": "digits"}},
                                      factors={"optimizer.learning_rate": [0.01, 0.1]}, seeds=1))
    config = expand(s)[1].config
    assert config.model.hidden_layers == [300, 100] and config.optimizer.learning_rate == 0.1
    with pytest.raises(GridError, match="unknown preset"):
        expand(StudySpec.model_validate(spec(base={"preset": "nope"})))
