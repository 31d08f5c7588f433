"""A minimal client of the MLflow tracking server's REST API, for bench/vs_mlflow.py: what a
training script or dashboard sends, one request at a time on a kept-alive connection."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import httpx

# The non-finite workload: what a client sends when a run diverges.
ODD = [0.5, 0.25, math.nan, 0.125, math.inf, 0.0625, -math.inf, 0.03125]


class Mlflow:
    def __init__(self, base: str) -> None:
        self.base, self.http = base, httpx.Client(base_url=base, timeout=300)

    def call(self, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        if body is None:
            response = self.http.get(f"/api/2.0/mlflow/{path}", params=params)
        else:  # json.dumps as a plain REST client would: NaN/Infinity become bare tokens
            response = self.http.post(f"/api/2.0/mlflow/{path}", content=json.dumps(body),
                                      headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return dict(response.json())

    def new_run(self, name: str) -> str:
        experiment = self.call("experiments/create", {"name": name})["experiment_id"]
        run = self.call("runs/create", {"experiment_id": experiment,
                                        "start_time": int(time.time() * 1000)})
        return str(run["run"]["info"]["run_id"])

    def log(self, run_id: str, points: Sequence[tuple[str, int, float | str]]) -> None:
        now = int(time.time() * 1000)
        for i in range(0, len(points), 1000):
            self.call("runs/log-batch", {"run_id": run_id, "metrics": [
                {"key": k, "value": v, "timestamp": now, "step": s}
                for k, s, v in points[i:i + 1000]]})

    def history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        found, token = [], None
        while True:
            page = self.call("metrics/get-history", run_id=run_id, metric_key=key,
                             **({"page_token": token} if token else {}))
            found += page.get("metrics", [])
            token = page.get("next_page_token")
            if not token:
                return found

    def sampled(self, run_id: str, key: str, points: int) -> int:
        response = self.http.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                                 params={"run_ids": run_id, "metric_key": key,
                                         "max_results": points})
        response.raise_for_status()
        return len(response.json().get("metrics", []))


def same(sent: float, got: float) -> bool:
    return (math.isnan(sent) and math.isnan(got)) or sent == got


def mlflow_nonfinite(mlflow: Mlflow, points: list[tuple[str, int, float]],
                     strings: bool) -> str:
    """``strings``: NaN/±inf as the strings protobuf's JSON uses (as MLflow's own client sends
    them); otherwise as ``json.dumps`` writes them (bare tokens, as a plain REST client does)."""
    run = mlflow.new_run(f"nonfinite-{strings}")
    sent = [(k, s, v if math.isfinite(v) or not strings else str(v).replace("inf", "Infinity")
             .replace("nan", "NaN")) for k, s, v in points]
    try:
        mlflow.log(run, sent)
        outcome = "accepted"
    except httpx.HTTPStatusError as exc:
        outcome = f"HTTP {exc.response.status_code}"
    stored = {int(m.get("step", 0)): float(m["value"]) for m in mlflow.history(run, points[0][0])}
    bad = sum(not (s in stored and same(v, stored[s])) for _, s, v in points)
    form = "strings" if strings else "bare tokens"
    return (f"  MLflow, {form} ({outcome}): stored {len(stored)} points "
            f"{sorted(stored.items())}; {bad} of {len(points)} lost or changed")
