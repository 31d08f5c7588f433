"""OpenAPI links from the operations that create a resource to those that take its id, so a
generated or stateful client can walk the API (submit, then read, page, compare, cancel)."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    """Operation ids are the handlers' names (``get_series``): links name them, and generated
    clients name their functions after them."""
    return route.name


def _links(parameter: str, expression: str, operations: dict[str, str]) -> dict[str, Any]:
    return {link: {"operationId": op, "parameters": {parameter: expression},
                   "description": f"The new resource's id as `{parameter}`"}
            for link, op in operations.items()}


_EXPERIMENT_ID = "$response.body#/id"
EXPERIMENT_LINKS: dict[str, Any] = {
    **_links("experiment_id", _EXPERIMENT_ID, {
        "GetExperiment": "get_experiment",
        "ReadMetrics": "read_metrics",
        "MetricNames": "metric_names",
        "GetSeries": "get_series",
        "Stream": "stream",
        "Cancel": "cancel_experiment",
        "Delete": "delete_experiment",
        "GetCheckpoint": "get_checkpoint",
        "GetModel": "get_model",
    }),
    **_links("ids", _EXPERIMENT_ID, {"Compare": "compare"}),
}
STUDY_LINKS: dict[str, Any] = {
    **_links("study_id", "$response.body#/id", {
        "GetStudy": "get_study",
        "GetCurves": "get_curves",
        "GetResultsCsv": "get_results_csv",
        "StreamStudy": "stream_study",
        "CancelStudy": "cancel_study",
        "DeleteStudy": "delete_study",
        "ListMembers": "list_experiments",
    }),
}
