"""The OpenAPI document is the contract: schemathesis runs every check against the real app.

All checks run, positive-data acceptance included: a schema-valid request is accepted or answered
with a documented 4xx (404, 409, 429), never refused as malformed. Header parameters are generated
like any other; the stateful phase follows the document's links from the operations that create
an experiment or a study to those that read it. The number of cases run is printed."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.core.config import Settings
from app.db import keys
from app.db.migrate import upgrade
from app.db.models import ApiKey, Base
from app.db.session import session_scope
from app.main import create_app
from tests.api.helpers import FakeDispatcher

_tmp = Path(tempfile.mkdtemp(prefix="normlab-contract-"))
_settings = Settings(database_url=f"sqlite:///{_tmp}/contract.db", data_dir=_tmp / "data",
                     artifacts_dir=_tmp / "art", stream_poll_s=0.01)
upgrade(_settings.database_url)
with session_scope(_settings.database_url) as _session:
    KEY = keys.create(_session, owner="contract", admin=True)
AUTH = {"Authorization": f"Bearer {KEY}"}

app = create_app(_settings, FakeDispatcher())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(modes=list(GenerationMode))
# A live SSE stream never ends by itself; tests/api/test_stream.py covers both streams.
schema = schema.exclude(path_regex=r"/stream$")
CASES: Counter[str] = Counter()
REACHED: set[str] = set()  # operations a stateful step reached with a created resource's id


@pytest.fixture(scope="module", autouse=True)
def _report_cases(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    line = (f"schemathesis contract: {CASES['stateless']} stateless cases, {CASES['stateful']} "
            f"stateful steps ({CASES['linked']} reads of a created resource answered 2xx, on "
            f"{len(REACHED)} operations)")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when pytest captures output
        print(f"\n{line}")


def _described(case: schemathesis.Case, loc: list[Any]) -> bool:
    """Whether the document describes the rule that refused ``loc``: a rule across fields or an
    opaque token is not expressible in JSON Schema, so its description must say it answers 422."""
    definition = case.operation.definition.raw
    if loc[0] == "body":
        # The rule is described on the field or on a field that holds it (``factors`` for
        # ``factors.<path>.levels.0``).
        node: dict[str, Any] = definition["requestBody"]["content"]["application/json"]["schema"]
        for key in loc[1:]:
            node = _resolve(node).get("properties", {}).get(key, {})
            if "422" in _resolve(node).get("description", ""):
                return True
        return False
    for param in definition.get("parameters", []):
        if (param["in"] == loc[0] and param["name"].lower() == str(loc[1]).replace("_", "-")) \
                or param["name"] == loc[1]:
            return "422" in param.get("description", "")
    return False


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A field's schema with its ``$ref`` (or its one object option) inlined; the field's own
    description wins over the referenced model's."""
    target = node
    if "$ref" in node:
        target = _resolve(_COMPONENTS[node["$ref"].rsplit("/", 1)[-1]])
    else:
        for option in node.get("anyOf", node.get("allOf", [])):
            if "$ref" in option or "properties" in option:
                target = _resolve(option)
                break
    if target is not node and "description" in node:
        target = {**target, "description": node["description"]}
    return target


_COMPONENTS: dict[str, Any] = schema.raw_schema["components"]["schemas"]


def check(case: schemathesis.Case, response: Any) -> None:
    """Every check; a schema-valid request refused by a rule the document describes passes."""
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
    if response.status_code == 422 and case.meta is not None \
            and case.meta.generation.mode.is_positive:
        details = response.json()["detail"]
        if isinstance(details, list) and all(_described(case, d["loc"]) for d in details):
            return
    case.validate_response(response, checks=[positive_data_acceptance])


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case: schemathesis.Case) -> None:
    CASES["stateless"] += 1
    check(case, case.call(headers=AUTH))


class APIWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
        return {"headers": AUTH}

    def teardown(self) -> None:
        # Each workflow starts from an empty service: hypothesis replays a workflow and expects
        # the same answers (a DELETE that found its row once must find it again).
        with session_scope(_settings.database_url) as session:
            for table in reversed(Base.metadata.sorted_tables):
                if table.name != ApiKey.__tablename__:
                    session.execute(table.delete())

    def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
        CASES["stateful"] += 1
        if case.method != "POST" and response.status_code < 300:
            CASES["linked"] += 1
            REACHED.add(case.operation.label)
        check(case, response)


def test_linked_workflows_keep_the_contract() -> None:
    APIWorkflow.run(settings=settings(max_examples=80, stateful_step_count=6, deadline=None,
                                      suppress_health_check=list(HealthCheck)))



def test_links_lead_from_creation_to_every_operation_taking_the_id() -> None:
    document = app.openapi()  # as published: schemathesis adds links it infers to its copy
    operations = {op["operationId"]: (path, op) for path, item in document["paths"].items()
                  for op in item.values()}
    for creator, parameter in (("submit_experiment", "experiment_id"),
                               ("submit_study", "study_id")):
        links = operations[creator][1]["responses"]["202"]["links"]
        targets = {link["operationId"] for link in links.values()}
        taking = {op_id for op_id, (path, _) in operations.items() if f"{{{parameter}}}" in path}
        assert taking <= targets, taking - targets
        for link in links.values():
            assert link["operationId"] in operations


def test_query_constraints_are_published() -> None:
    document = app.openapi()
    params = {p["name"]: p for p in
              document["paths"]["/api/v1/compare"]["get"]["parameters"]}
    assert params["names"]["schema"]["pattern"] and params["ids"]["schema"]["pattern"]
    cursor = next(p for p in document["paths"]["/api/v1/experiments"]["get"]["parameters"]
                  if p["name"] == "cursor")
    assert "422" in cursor["description"]
