"""app.db.metric_store.postgres_rollups: the stored blocks always equal blocks recomputed from
the points, whatever path wrote or deleted them (appends, retried and overlapping batches, a
batch naming a point twice, a resumed run's deletion, deleting the experiment)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db import experiments, lifecycle, metrics
from app.db.metric_store import postgres_rollups as rollups
from app.db.models import MAX_STEP
from app.db.session import session_factory
from tests.database import truncate_all
from worker.training.result import MetricPoint

RECOMPUTED = f"{rollups.SUMMARY_SELECT} WHERE p.experiment_id = :e GROUP BY 1, 2, 3, 4"
STORED = ("SELECT experiment_id, name, block_size, block, step_start, step_end, count, finite, "
          "vmin, vmax, vsum, first_step, first, last_step, last FROM metric_rollups "
          "WHERE experiment_id = :e")


@pytest.fixture
def pg_session(postgres_url: str) -> Iterator[Session]:
    """A session on the emptied Postgres test database."""
    truncate_all(postgres_url)
    with session_factory(postgres_url)() as session:
        yield session


def new_experiment(session: Session) -> uuid.UUID:
    row, _ = experiments.create(session, config={"name": "rollups"}, tags=[])
    session.commit()
    return row.id


def points(steps: range, names: tuple[str, ...] = ("loss", "grad_norm"),
           shift: float = 0.0) -> list[MetricPoint]:
    odd = {5: math.nan, 700: math.inf, 701: -math.inf}
    return [MetricPoint(n, s, 1, odd.get(s, math.sin(s) * (i + 1) + shift), 1.0)
            for s in steps for i, n in enumerate(names)]


def assert_true_to_points(session: Session, experiment_id: uuid.UUID) -> None:
    def rows(sql: str) -> list[tuple[object, ...]]:
        found = session.execute(text(sql), {"e": experiment_id}).all()
        return sorted(tuple(r) for r in found)

    stored, recomputed = rows(STORED), rows(RECOMPUTED)
    assert len(stored) == len(recomputed) > 0
    for got, want in zip(stored, recomputed, strict=True):
        assert got[:10] == want[:10] and got[11:] == want[11:], (got, want)
        assert (got[10] is None) == (want[10] is None)  # vsum: the order of additions differs
        if want[10] is not None:
            assert got[10] == pytest.approx(want[10], rel=1e-9, abs=1e-9)


def test_appended_batches_merge_into_true_blocks(pg_session: Session) -> None:
    experiment_id = new_experiment(pg_session)
    for lo in range(0, 9000, 1100):  # batches cut blocks of every size in odd places
        metrics.insert_points(pg_session, experiment_id, points(range(lo, lo + 1100)))
        pg_session.commit()
    assert_true_to_points(pg_session, experiment_id)


def test_overlapping_and_repeated_points_recompute_their_blocks(pg_session: Session) -> None:
    experiment_id = new_experiment(pg_session)
    metrics.insert_points(pg_session, experiment_id, points(range(0, 3000)))
    pg_session.commit()
    # A retried batch overlapping stored steps, with new ones after (the staging path) ...
    metrics.insert_points(pg_session, experiment_id, points(range(2500, 5000), shift=9.0))
    # ... and a batch naming one point twice, past the last step.
    twice = points(range(5000, 5100))
    again = points(range(5050, 5060), shift=1.0)
    metrics.insert_points(pg_session, experiment_id, [*twice, *again])
    pg_session.commit()
    assert_true_to_points(pg_session, experiment_id)


def test_a_resumed_run_deletes_into_true_blocks(pg_session: Session) -> None:
    experiment_id = new_experiment(pg_session)
    metrics.insert_points(pg_session, experiment_id, points(range(0, 40_000, 3)))
    pg_session.commit()
    lifecycle.delete_points_after(pg_session, experiment_id, 20_001)  # mid-block for every size
    pg_session.commit()
    assert_true_to_points(pg_session, experiment_id)
    metrics.insert_points(pg_session, experiment_id, points(range(20_002, 30_000), shift=2.0))
    pg_session.commit()
    assert_true_to_points(pg_session, experiment_id)


def test_deleting_the_experiment_deletes_its_blocks(pg_session: Session) -> None:
    experiment_id = new_experiment(pg_session)
    metrics.insert_points(pg_session, experiment_id, points(range(0, 100)))
    pg_session.commit()
    experiments.request_cancel(pg_session, experiment_id)  # queued → cancelled: finished
    pg_session.commit()
    experiments.delete_finished(pg_session, experiment_id)
    left = pg_session.execute(text("SELECT count(*) FROM metric_rollups WHERE experiment_id = :e"),
                      {"e": experiment_id}).scalar()
    assert left == 0


def test_steps_past_2_to_the_48_merge_into_true_blocks(pg_session: Session) -> None:
    """Blocks are grouped without packing (name, block) into one integer: steps as large as
    the API accepts keep their own blocks (packing into 42 bits once merged them)."""
    experiment_id = new_experiment(pg_session)
    far = 2**50
    for lo in (far, far + 5000, MAX_STEP - 3000):
        metrics.insert_points(pg_session, experiment_id, points(range(lo, lo + 2000)))
        pg_session.commit()
    assert_true_to_points(pg_session, experiment_id)


def test_block_size_reads_the_fewest_rows() -> None:
    assert rollups.block_size_for(1_000_000, 1000) == 64
    assert rollups.block_size_for(100_000_000, 100) == 512
    assert rollups.block_size_for(1_000_000_000, 100) == 4096
    assert rollups.block_size_for(20_000, 500) is None  # points alone are cheaper


def test_names_that_need_quoting_in_array_literals(pg_session: Session) -> None:
    """The blocks go to Postgres as array literals: names with quotes, backslashes, commas,
    braces or the word NULL must come back as they were."""
    experiment_id = new_experiment(pg_session)
    odd = ('a"b', "c\\d", "x,y", "{z}", "NULL", "sp ace")
    metrics.insert_points(pg_session, experiment_id, points(range(0, 200), names=odd))
    pg_session.commit()
    assert_true_to_points(pg_session, experiment_id)
    stored = {r[0] for r in pg_session.execute(text(
        "SELECT DISTINCT name FROM metric_rollups WHERE experiment_id = :e"), {"e": experiment_id})}
    assert stored == set(odd)
