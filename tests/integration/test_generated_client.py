"""A Python client generated from `/openapi.json` (openapi-python-client) is enough to integrate:
using only it, submit an experiment to a real `normlab serve`, wait for it, page its metrics to
the end, read a series and a compare."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import SMALL, TERMINAL, service_env, start_api
from tests.waiting import HANG_S


def _generate(base: str, out: Path) -> None:
    spec = out / "openapi.json"
    spec.write_bytes(httpx.get(f"{base}/openapi.json", timeout=30).content)
    # The command a dashboard author runs (README, "Generated clients").
    subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path",
                    str(spec), "--meta", "none", "--output-path", str(out / "normlab_client")],
                   check=True, cwd=out)


def test_generated_client_submits_waits_pages_and_compares(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    env = service_env(tmp_path, NORMLAB_DATABASE_URL=f"sqlite:///{tmp_path}/normlab.db")
    api, base = start_api(env, tmp_path)
    try:
        _generate(base, tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        _use_only_the_generated_client(base)
    finally:
        api.stop()
        for name in [m for m in sys.modules if m.split(".")[0] == "normlab_client"]:
            del sys.modules[name]


def _use_only_the_generated_client(base: str) -> None:
    nc: Any = importlib.import_module("normlab_client")
    experiments: Any = importlib.import_module("normlab_client.api.experiments")
    metrics: Any = importlib.import_module("normlab_client.api.metrics")
    models: Any = importlib.import_module("normlab_client.models")
    for module in ("submit_experiment", "get_experiment"):
        importlib.import_module(f"normlab_client.api.experiments.{module}")
    for module in ("read_metrics", "get_series", "compare"):
        importlib.import_module(f"normlab_client.api.metrics.{module}")

    client = nc.Client(base_url=base, timeout=httpx.Timeout(30))
    body = models.SubmitExperimentExperimentSubmission.from_dict({**SMALL, "preset": "geron-bn"})
    submitted = experiments.submit_experiment.sync(client=client, body=body)
    assert isinstance(submitted, models.ExperimentOut), submitted
    experiment_id: uuid.UUID = submitted.id

    deadline = time.monotonic() + HANG_S  # a hang guard only (tests/waiting.py)
    done = experiments.get_experiment.sync(experiment_id, client=client)
    while done.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        done = experiments.get_experiment.sync(experiment_id, client=client)
    assert done.status == "succeeded", done
    steps = done.summary.steps

    points: list[Any] = []
    after = -1
    while True:
        page = metrics.read_metrics.sync(experiment_id, client=client, names="loss",
                                         after_step=after, limit=7)
        assert isinstance(page, models.MetricPage), page
        points.extend(page.items)
        if not page.has_more:  # caught up with a finished run: the cursor stays where it is
            break
        after = page.next_after_step
    assert [p.step for p in points] == list(range(1, steps + 1))

    series = metrics.get_series.sync(experiment_id, "loss", client=client, points=4)
    assert isinstance(series, models.SeriesOut), series
    assert 1 <= len(series.buckets) <= 4 and series.to_step == steps

    compared = metrics.compare.sync(client=client, ids=str(experiment_id), names="loss",
                                    points=4)
    assert isinstance(compared, models.CompareOut), compared
    assert [e.id for e in compared.experiments] == [experiment_id]
    assert compared.axis.to_step == steps
