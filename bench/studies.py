"""Studies: creating a 512-member study, and reading a finished one, through the API in-process.

    python3 bench/studies.py [--database-url URL] [--broker-url redis://…/N] [--repeat 20]

Creates a 8 × 8-level × 8-seed study (512 members) with ``POST /studies`` (time to the 202:
validation of every member, one transaction) and, side by side, the same 512 configs as 512
``POST /experiments``; with ``--broker-url`` it then times sending the 512 members to Redis as
Celery messages, which the route does after answering. Then it marks every member finished
(directly in the database, as workers would) and times ``GET /studies/{id}``: the first read
computes the results document, later reads are served from the cache a terminal study keeps.
Truncates the given Postgres database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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
from app.studies.spec import StudySpec

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("NORMLAB_TEST_POSTGRES_URL"))
    parser.add_argument("--broker-url", default=None)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    url = args.database_url
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
