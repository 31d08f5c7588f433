"""Studies: creating a 512-member study, and reading a finished one, through the API in-process;
and (``--end-to-end``) a 32-member study trained by real workers, fused vs unfused.

    python3 bench/studies.py [--database-url URL] [--broker-url redis://…/N] [--repeat 20]
    python3 bench/studies.py --end-to-end --broker-url redis://…/N [--repeat 2]

Creates a 8 × 8-level × 8-seed study (512 members) with ``POST /studies`` (time to the 202:
validation of every member, one transaction) and, side by side, the same 512 configs as 512
``POST /experiments``; with ``--broker-url`` it then times sending the 512 members to Redis as
Celery messages, which the route does after answering. Then it marks every member finished
(directly in the database, as workers would) and times ``GET /studies/{id}``: the first read
computes the results document, later reads are served from the cache a terminal study keeps.
Truncates the given Postgres database.

``--end-to-end``: the ``bn-rescues-sigmoid`` preset with 16 seeds (32 members: 3×100 sigmoid on
digits, 20 epochs, BN off/on) through the whole service — ``POST /studies``, Redis, one Celery
worker (2 processes, one torch thread each), Postgres — timed from the POST until every member
is terminal. Two API processes differ only in ``NORMLAB_FUSE_MAX``: 1 (every member its own job)
vs the default (fused groups of 8: 4 jobs); runs alternate ABBA, the same worker serves both.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from app.core.config import Settings
from app.db.migrate import upgrade
from app.db.models import Experiment
from app.db.session import engine_for, session_scope
from app.dispatch import CeleryDispatcher
from app.main import create_app
from app.studies import service
from app.studies.grid import expand
from app.studies.presets import preset_spec
from app.studies.spec import StudySpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.conftest import service_env, start_api, start_worker

SPEC: dict[str, Any] = {
    "name": "bench-512",
    "base": {"dataset": {"name": "digits"}, "training": {"epochs": 2},
             "resources": {"device": "cpu"}},
    "factors": {
        "optimizer.learning_rate": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
        "model.hidden_layers": [[16], [32], [48], [64], [80], [96], [112], [128]],
    },
    "seeds": 8,
}


class DropDispatcher:
    def send(self, experiment_id: uuid.UUID, queue: str) -> None:
        pass

    def send_group(self, experiment_ids: object, queue: str) -> None:
        pass

    def ping(self) -> None:
        pass


def finish_all(url: str, study_id: str) -> None:
    """Every member succeeded with a plausible summary (what workers would have written)."""
    with session_scope(url) as session:
        ids = list(session.scalars(text("SELECT id FROM experiments WHERE study_id = :s")
                                   .bindparams(s=uuid.UUID(study_id))))
        for i, ident in enumerate(ids):
            acc = 0.5 + (i % 97) / 200
            session.execute(update(Experiment).where(Experiment.id == ident).values(
                status="succeeded", summary={"status": "succeeded", "final_test_accuracy": acc,
                                             "final_loss": 1 - acc, "steps": 100}))


def truncate(url: str) -> None:
    with engine_for(url).begin() as connection:
        connection.execute(text("TRUNCATE metric_points, metric_rollups, experiment_tags, "
                                "experiments, studies, api_keys CASCADE"))


def run_study(client: httpx.Client, spec: dict[str, Any]) -> float:
    """Seconds from the POST until every member is terminal; all must have succeeded."""
    started = time.perf_counter()
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 202, response.text
    study_id = response.json()["id"]
    while not (doc := client.get(f"/api/v1/studies/{study_id}").json())["progress"]["terminal"]:
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    assert doc["progress"]["by_status"] == {"succeeded": 32}, doc["progress"]
    return elapsed


def end_to_end(url: str, broker_url: str, repeat: int) -> None:
    import redis

    upgrade(url)
    truncate(url)
    redis.Redis.from_url(broker_url).flushdb()
    tmp = Path(tempfile.mkdtemp())
    common = {"NORMLAB_DATABASE_URL": url, "NORMLAB_BROKER_URL": broker_url,
              "NORMLAB_TORCH_THREADS": "1", "NORMLAB_MAX_ACTIVE_PER_OWNER": "1000"}
    worker = start_worker(service_env(tmp, **common), tmp, "bench", concurrency=2)
    apis: dict[str, tuple[Any, str]] = {}
    for name, fuse in (("unfused", "1"), ("fused", "8")):
        (tmp / name).mkdir()
        apis[name] = start_api(service_env(tmp / name, **common, NORMLAB_FUSE_MAX=fuse), tmp / name)
    spec = preset_spec("bn-rescues-sigmoid", {"seeds": 16})
    times: dict[str, list[float]] = {"unfused": [], "fused": []}
    try:
        for i in range(repeat):
            for name in ("fused", "unfused") if i % 2 else ("unfused", "fused"):
                with httpx.Client(base_url=apis[name][1], timeout=30) as client:
                    seconds = run_study(client, {**spec, "name": f"{name}-{i}"})
                times[name].append(seconds)
                print(f"run {i + 1} {name}: {seconds:.1f} s", flush=True)
    finally:
        for api, _ in apis.values():
            api.stop()
        worker.stop(signal.SIGTERM)
        truncate(url)
    unfused, fused = (statistics.median(times[n]) for n in ("unfused", "fused"))
    print(f"32-member study end to end: unfused (32 jobs) {unfused:.1f} s, fused (4 groups of "
          f"8) {fused:.1f} s, ratio {unfused / fused:.2f}x (medians of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("NORMLAB_TEST_POSTGRES_URL"))
    parser.add_argument("--broker-url", default=None)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--end-to-end", action="store_true")
    args = parser.parse_args()
    url = args.database_url
    if args.end_to_end:
        end_to_end(url, args.broker_url, args.repeat)
        return
    upgrade(url)
    with engine_for(url).begin() as connection:
        connection.execute(text("TRUNCATE metric_points, metric_rollups, experiment_tags, "
                                "experiments, studies, api_keys CASCADE"))
    tmp = Path(tempfile.mkdtemp())
    settings = Settings(database_url=url, broker_url=args.broker_url, data_dir=tmp / "data",
                        artifacts_dir=tmp / "art", max_active_per_owner=10_000)
    with TestClient(create_app(settings, dispatcher=DropDispatcher())) as client:
        # Warm up as a running server is: connections to the database and broker, imports.
        warm = {**SPEC, "name": "warm-up", "factors": {"optimizer.learning_rate": [0.1, 0.2]},
                "seeds": 1}
        assert client.post("/api/v1/studies", json=warm).status_code == 202
        started = time.perf_counter()
        response = client.post("/api/v1/studies", json=SPEC)
        create_s = time.perf_counter() - started
        assert response.status_code == 202, response.text
        study_id = response.json()["id"]

        bodies = [m.config.model_dump(mode="json") for m in expand(StudySpec.model_validate(SPEC))]
        started = time.perf_counter()
        for body in bodies:
            assert client.post("/api/v1/experiments", json=body).status_code == 202
        singles_s = time.perf_counter() - started
        dispatch_s = None
        if args.broker_url:
            celery = CeleryDispatcher(settings)
            members = client.get("/api/v1/experiments", params={"study_id": study_id})
            service.dispatch_members(celery, settings, [(uuid.UUID(members.json()["items"][0]
                                                                   ["id"]), "cpu")])  # connect
            ids = [(uuid.uuid4(), "cpu") for _ in range(512)]
            started = time.perf_counter()
            assert service.dispatch_members(celery, settings, ids) == 512
            dispatch_s = time.perf_counter() - started

        finish_all(url, study_id)
        started = time.perf_counter()
        first = client.get(f"/api/v1/studies/{study_id}")
        first_s = time.perf_counter() - started
        assert first.status_code == 200 and first.json()["progress"]["terminal"]
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            again = client.get(f"/api/v1/studies/{study_id}")
            times.append(time.perf_counter() - started)
            assert again.content == first.content
    cached_s = statistics.median(times)
    with engine_for(url).begin() as connection:  # leave no queued experiments behind
        connection.execute(text("TRUNCATE metric_points, metric_rollups, experiment_tags, "
                                "experiments, studies, api_keys CASCADE"))
    print(f"create 512-member study (to the 202): {create_s * 1e3:.0f} ms; "
          f"512 single POST /experiments: {singles_s * 1e3:.0f} ms "
          f"(ratio {singles_s / create_s:.1f}x)")
    if dispatch_s is not None:
        print(f"then 512 Celery messages to Redis (after the 202): {dispatch_s * 1e3:.0f} ms")
    print(f"GET finished 512-member study: first (computes) {first_s * 1e3:.0f} ms, "
          f"cached median of {args.repeat} {cached_s * 1e3:.1f} ms "
          f"(ratio {first_s / cached_s:.0f}x); document {len(first.content):,} bytes")


if __name__ == "__main__":
    main()
