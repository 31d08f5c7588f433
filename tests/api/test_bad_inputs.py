"""Bad submissions: each one is a 4xx that names the problem, and none creates or sends anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import API, FakeDispatcher

JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


@dataclass
class Bad:
    """One bad request: its body (a dict is sent as JSON, bytes as they are) and what to expect."""

    id: str
    body: Any
    status: int | tuple[int, ...] = 422
    loc: tuple[str | int, ...] | None = None  # the offending field's location, for 422s
    says: str | None = None  # a word the error message must contain
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def _chunks() -> Iterator[bytes]:
    """A body over 1 MiB sent in chunks, without a Content-Length that gives it away."""
    yield b'{"name": "'
    for _ in range(20):
        yield b"a" * 65536
    yield b'"}'


CASES = [
    # Wrong types.
    Bad("string-epochs", {"training": {"epochs": "twenty"}}, loc=("body", "training", "epochs")),
    Bad("fractional-epochs", {"training": {"epochs": 2.5}}, loc=("body", "training", "epochs")),
    Bad("list-learning-rate", {"optimizer": {"learning_rate": [0.1]}},
        loc=("body", "optimizer", "learning_rate")),
    Bad("object-hidden-layers", {"model": {"hidden_layers": {"a": 1}}},
        loc=("body", "model", "hidden_layers")),
    Bad("string-batch-norm", {"model": {"batch_norm": "yes"}},
        loc=("body", "model", "batch_norm")),
    Bad("number-name", {"name": 12}, loc=("body", "name")),
    # Out-of-range values.
    Bad("epochs-0", {"training": {"epochs": 0}}, loc=("body", "training", "epochs")),
    Bad("epochs-1001", {"training": {"epochs": 1001}}, loc=("body", "training", "epochs")),
    Bad("batch-size-0", {"training": {"batch_size": 0}}, loc=("body", "training", "batch_size")),
    Bad("batch-size-65537", {"training": {"batch_size": 65537}},
        loc=("body", "training", "batch_size")),
    Bad("learning-rate-0", {"optimizer": {"learning_rate": 0}},
        loc=("body", "optimizer", "learning_rate")),
    Bad("learning-rate-11", {"optimizer": {"learning_rate": 11}},
        loc=("body", "optimizer", "learning_rate")),
    Bad("decay-0", {"model": {"batch_norm": {"decay": 0}}},
        loc=("body", "model", "batch_norm", "decay")),
    Bad("decay-1", {"model": {"batch_norm": {"decay": 1}}},
        loc=("body", "model", "batch_norm", "decay")),
    Bad("epsilon-0", {"model": {"batch_norm": {"epsilon": 0}}},
        loc=("body", "model", "batch_norm", "epsilon")),
    Bad("threshold-0", {"clipping": {"mode": "norm", "threshold": 0}},
        loc=("body", "clipping", "threshold")),
    Bad("17-hidden-layers", {"model": {"hidden_layers": [10] * 17}},
        loc=("body", "model", "hidden_layers")),
    Bad("layer-width-4097", {"model": {"hidden_layers": [4097]}},
        loc=("body", "model", "hidden_layers", 0)),
    Bad("negative-seed", {"training": {"seed": -1}}, loc=("body", "training", "seed")),
    Bad("empty-name", {"name": ""}, loc=("body", "name")),
    # Unknown fields.
    Bad("unknown-top-level", {"learning_rate": 0.1}, loc=("body", "learning_rate")),
    Bad("unknown-nested", {"model": {"batch_norm": {"momentum": 0.9}}},
        loc=("body", "model", "batch_norm", "momentum")),
    # NaN and Infinity literals (Python's json accepts them; the config must not).
    Bad("nan-literal", b'{"optimizer": {"learning_rate": NaN}}',
        loc=("body", "optimizer", "learning_rate")),
    Bad("infinity-literal", b'{"clipping": {"mode": "norm", "threshold": Infinity}}',
        loc=("body", "clipping", "threshold")),
    Bad("minus-infinity-literal", b'{"optimizer": {"weight_decay": -Infinity}}',
        loc=("body", "optimizer", "weight_decay")),
    Bad("infinity-epochs", b'{"training": {"epochs": Infinity}}',
        loc=("body", "training", "epochs")),
    # Empty, malformed and non-object bodies.
    Bad("empty-body", b"", loc=("body",)),
    Bad("not-json", b"epochs=5", status=(400, 422), says="JSON"),
    Bad("truncated-json", b'{"training": {"epochs": 5', status=(400, 422), says="JSON"),
    Bad("invalid-utf8", b'{"name": "\xff"}', status=(400, 422)),
    Bad("deeply-nested", b"[" * 100_000, status=(400, 422)),
    Bad("json-array", b"[1, 2]", loc=("body",), says="object"),
    Bad("json-number", b"3", loc=("body",), says="object"),
    Bad("json-string", b'"geron-bn"', loc=("body",), says="object"),
    Bad("json-null", b"null", loc=("body",), says="object"),
    Bad("form-content-type", b'{"name": "x"}', loc=("body",), says="application/json",
        headers={"content-type": "application/x-www-form-urlencoded"}),
    # Oversized arrays and bodies.
    Bad("10000-hidden-layers", {"model": {"hidden_layers": [300] * 10_000}},
        loc=("body", "model", "hidden_layers")),
    Bad("10000-tags", {"tags": ["t"] * 10_000}, loc=("body", "tags")),
    Bad("body-over-1-MiB", json.dumps({"name": "a" * (MIB + 10)}).encode(), status=413,
        says="larger"),
    # Presets, tags, idempotency key.
    Bad("unknown-preset", {"preset": "geron-bm"}, loc=("body", "preset"), says="geron-bn"),
    Bad("preset-not-a-string", {"preset": ["geron-bn"]}, loc=("body", "preset")),
    Bad("bad-tag-pattern", {"tags": ["has space"]}, loc=("body", "tags", 0)),
    Bad("empty-tag", {"tags": ["ok", ""]}, loc=("body", "tags", 1)),
    Bad("too-many-tags", {"tags": [f"t{i}" for i in range(33)]}, loc=("body", "tags")),
    Bad("tags-not-a-list", {"tags": "bn"}, loc=("body", "tags")),
    Bad("idempotency-key-too-long", {}, loc=("header", "idempotency-key"),
        headers={**JSON, "Idempotency-Key": "k" * 256}),
    # Rules across fields.
    Bad("normal-init-without-std", {"model": {"init": "normal"}}, loc=("body", "model", "init_std"),
        says="init_std"),
    Bad("device-tpu", {"resources": {"device": "tpu"}}, loc=("body", "resources", "device")),
    Bad("unknown-dataset", {"dataset": {"name": "cifar10"}}, loc=("body", "dataset", "name")),
    Bad("splits-leave-no-training-data", {"dataset": {"validation_size": 0.5, "test_size": 0.5}},
        loc=("body", "dataset", "validation_size"), says="validation_size"),
    Bad("batch-size-1-with-bn", {"training": {"batch_size": 1}},
        loc=("body", "training", "batch_size"), says="batch_size"),
    Bad("nesterov-with-adam", {"optimizer": {"name": "adam", "momentum": 0.9, "nesterov": True}},
        loc=("body", "optimizer", "nesterov"), says="nesterov"),
    Bad("preset-with-bad-override", {"preset": "geron-bn", "training": {"epochs": 0}},
        loc=("body", "training", "epochs")),
]  # fmt: skip


def _post(client: TestClient, case: Bad) -> Any:
    url = f"{API}/experiments"
    if isinstance(case.body, bytes):
        return client.post(url, content=case.body, headers=case.headers)
    return client.post(url, json=case.body, headers=case.headers)


def _assert_nothing_created(client: TestClient, dispatcher: FakeDispatcher) -> None:
    assert client.get(f"{API}/experiments").json()["items"] == []
    assert dispatcher.sent == []


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_submission_is_a_4xx_naming_the_problem(
    client: TestClient, dispatcher: FakeDispatcher, case: Bad
) -> None:
    response = _post(client, case)
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in expected, response.text
    assert 400 <= response.status_code < 500
    assert len(response.content) < 4096, "an error must not echo a large input back"
    detail = response.json()["detail"]
    assert detail, "the error must say what is wrong"
    text = json.dumps(detail)
    if case.loc is not None:
        assert response.status_code == 422
        locs = [tuple(item["loc"]) for item in detail]
        assert case.loc in locs, f"{case.loc} not among {locs}"
        assert all(item["msg"] for item in detail)
    if case.says is not None:
        assert case.says in text
    _assert_nothing_created(client, dispatcher)


def test_chunked_body_over_1_mib_is_413(client: TestClient, dispatcher: FakeDispatcher) -> None:
    response = client.post(f"{API}/experiments", content=_chunks(), headers=JSON)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert "larger" in response.json()["detail"]
    _assert_nothing_created(client, dispatcher)


def test_content_length_over_1_mib_is_413_before_reading(
    client: TestClient, dispatcher: FakeDispatcher
) -> None:
    body = b'{"name": "' + b"a" * MIB + b'"}'
    response = client.post(
        f"{API}/experiments", content=body, headers={**JSON, "content-length": str(len(body))}
    )
    assert response.status_code == 413
    _assert_nothing_created(client, dispatcher)


def test_a_body_just_under_1_mib_is_read(client: TestClient) -> None:
    """The limit is 1 MiB, not less: a large but valid-size body gets a normal 422."""
    body = json.dumps({"name": "x", "pad": "a" * (MIB - 100)}).encode()
    assert len(body) <= MIB
    response = client.post(f"{API}/experiments", content=body, headers=JSON)
    assert response.status_code == 422
    assert ["body", "pad"] in [item["loc"] for item in response.json()["detail"]]
    assert len(response.content) < 4096  # the long string is not echoed back whole


def test_nan_in_input_is_echoed_as_a_string_not_a_500(client: TestClient) -> None:
    response = client.post(
        f"{API}/experiments", content=b'{"optimizer": {"learning_rate": NaN}}', headers=JSON
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["input"] == "NaN"


def test_bad_inputs_after_a_good_one_change_nothing(
    client: TestClient, dispatcher: FakeDispatcher
) -> None:
    good = client.post(f"{API}/experiments", json={"name": "good"})
    assert good.status_code == 202
    for case in CASES:
        assert 400 <= _post(client, case).status_code < 500, case.id
    items = client.get(f"{API}/experiments").json()["items"]
    assert [item["id"] for item in items] == [good.json()["id"]]
    assert items[0] == client.get(f"{API}/experiments/{good.json()['id']}").json()
    assert len(dispatcher.sent) == 1
