"""Pre-aggregated blocks of every metric series, so that a long series is bucketed from blocks.

A downsampled view of 1,000,000 points read 1,000,000 index entries, whatever the number of
buckets. Here every metric is also summarized in aligned blocks of ``BLOCK_SIZES`` steps (count,
finite count, min, max, sum, first/last finite value and their steps). A bucket then reads its
whole blocks, and raw points only for the partial blocks at its two edges: for 1,000 buckets
over 1,000,000 steps, about 16,000 blocks and 64,000 points. The buckets are exactly the raw
ones (tests/db/test_series.py compares every path with one reference); only a mean may differ in
the last bits, as sums are added in another order.

Postgres only: the Postgres metric store (``postgres``) maintains and reads them; SQLite's
series are small and are bucketed from points. Every write of points keeps the blocks true:

- a batch appended past the experiment's last step (the COPY path) merges its own summary into
  the blocks it touches (``merge``): exact, since every point in it is new;
- any other batch (a retry, a resumed run) and every deletion recompute the blocks they touch
  from the stored points (``rebuild``).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from app.db.bucketing import Bucket, summarize
from app.db.metric_store.interface import Columns
from app.db.models import FINITE, MAX_STEP

BLOCK_SIZES = (64, 512, 4096, 32768)

_MERGE = """
INSERT INTO metric_rollups AS r (experiment_id, name, block_size, block, step_start, step_end,
    count, finite, vmin, vmax, vsum, first_step, first, last_step, last)
SELECT %(experiment_id)s, * FROM unnest(%(name)s::text[], %(block_size)s::int4[],
    %(block)s::int8[], %(step_start)s::int8[], %(step_end)s::int8[], %(count)s::int8[],
    %(finite)s::int8[], %(vmin)s::float8[], %(vmax)s::float8[], %(vsum)s::float8[],
    %(first_step)s::int8[], %(first)s::float8[], %(last_step)s::int8[], %(last)s::float8[])
ON CONFLICT (experiment_id, name, block_size, block) DO UPDATE SET
    step_start = least(r.step_start, excluded.step_start),
    step_end = greatest(r.step_end, excluded.step_end),
    count = r.count + excluded.count,
    finite = r.finite + excluded.finite,
    vmin = least(r.vmin, excluded.vmin),
    vmax = greatest(r.vmax, excluded.vmax),
    vsum = CASE WHEN r.vsum IS NULL THEN excluded.vsum WHEN excluded.vsum IS NULL THEN r.vsum
                ELSE r.vsum + excluded.vsum END,
    first = CASE WHEN r.first_step IS NULL OR excluded.first_step < r.first_step
                 THEN excluded.first ELSE r.first END,
    first_step = least(r.first_step, excluded.first_step),
    last = CASE WHEN r.last_step IS NULL OR excluded.last_step > r.last_step
                THEN excluded.last ELSE r.last END,
    last_step = greatest(r.last_step, excluded.last_step)
"""

# The blocks of stored points, computed in SQL (a rebuild, and migration 0005's backfill).
# first/last finite value: the smallest/largest [step, value] pair, compared as arrays.
SUMMARY_SELECT = f"""
SELECT p.experiment_id, p.name, s.size, p.step / s.size, min(p.step), max(p.step), count(*),
       count(p.value), min(p.value), max(p.value), sum(p.value),
       min(p.step) FILTER (WHERE p.kind = {FINITE}),
       (min(ARRAY[p.step::float8, p.value]) FILTER (WHERE p.kind = {FINITE}))[2],
       max(p.step) FILTER (WHERE p.kind = {FINITE}),
       (max(ARRAY[p.step::float8, p.value]) FILTER (WHERE p.kind = {FINITE}))[2]
FROM metric_points p CROSS JOIN unnest(ARRAY[{", ".join(map(str, BLOCK_SIZES))}]) AS s(size)
"""
_COLUMNS = ("experiment_id, name, block_size, block, step_start, step_end, count, finite, "
            "vmin, vmax, vsum, first_step, first, last_step, last")
_DELETE_RANGE = """
DELETE FROM metric_rollups WHERE experiment_id = %(experiment_id)s AND block_size = %(size)s
  AND block BETWEEN %(lo)s::int8 / %(size)s AND %(hi)s::int8 / %(size)s {names}
"""
_REBUILD = f"""
INSERT INTO metric_rollups ({_COLUMNS})
{SUMMARY_SELECT}
WHERE p.experiment_id = %(experiment_id)s AND s.size = %(size)s
  AND p.step >= %(lo)s::int8 / %(size)s * %(size)s
  AND p.step < (%(hi)s::int8 / %(size)s + 1) * %(size)s {{names}}
GROUP BY 1, 2, 3, 4
"""


def merge(cursor: Any, experiment_id: uuid.UUID, batch: Columns) -> None:
    """Add the summary of the batch (all of it new points) to the blocks it falls in."""
    count = len(batch.name)
    if not count:
        return
    distinct, name_code = batch.name_codes()
    step, value, finite = batch.step, batch.value, batch.kind == FINITE
    order = np.lexsort((step, name_code))
    name_code, step, value, finite = name_code[order], step[order], value[order], finite[order]
    names = np.array([_quoted(name) for name in distinct], dtype=object)
    columns: dict[str, list[np.ndarray]] = {}
    for size in BLOCK_SIZES:
        # One group per (name, block), numbered in order: the points are sorted by name, then
        # step, so a group starts wherever the name or the block changes. Any step fits.
        block = step // size
        starts = np.ones(count, dtype=np.bool_)
        starts[1:] = (name_code[1:] != name_code[:-1]) | (block[1:] != block[:-1])
        s = summarize(np.cumsum(starts), step, value, finite)
        present = s.finite > 0
        parts = {
            "name": names[name_code[starts]], "block_size": np.full(len(s.key), size),
            "block": block[starts], "step_start": s.step_start,
            "step_end": s.step_end, "count": s.count, "finite": s.finite,
            "vmin": s.vmin, "vmax": s.vmax, "vsum": s.vsum,
            "first_step": s.first_step, "first": s.first,
            "last_step": s.last_step, "last": s.last,
        }
        for key, column in parts.items():
            if key in _OPTIONAL:  # NULL where the block has no finite value
                column = np.where(present, column, _NULL)
            columns.setdefault(key, []).append(column)
    # Postgres array literals: adapting the lists element by element cost more than the upsert
    # itself (≈ 5 ms for 14 columns of 300). repr() of a float round-trips exactly.
    params = {}
    for key, chunks in columns.items():
        values = np.concatenate(chunks).tolist()
        if key in _OPTIONAL:
            text = ",".join("NULL" if v is None else repr(v) for v in values)
        else:
            text = ",".join(values if key == "name" else map(repr, values))
        params[key] = "{" + text + "}"
    cursor.execute(_MERGE, {"experiment_id": experiment_id, **params})


def _quoted(name: str) -> str:
    """An element of a Postgres text[] literal."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_NULL = np.array(None, dtype=object)
_OPTIONAL = {"vmin", "vmax", "vsum", "first_step", "first", "last_step", "last"}


def rebuild(cursor: Any, experiment_id: uuid.UUID, lo: int, hi: int | None = None,
            names: list[str] | None = None) -> None:
    """Recompute, from the stored points, every block that holds a step in [lo, hi] (``hi``
    None: no upper bound) of the given metrics (None: all of them)."""
    for size in BLOCK_SIZES:
        params = {"experiment_id": experiment_id, "size": size, "lo": max(lo, 0),
                  "hi": MAX_STEP if hi is None else hi, "names": names}
        cursor.execute(_DELETE_RANGE.format(names="AND name = ANY(%(names)s)" if names else ""),
                       params)
        cursor.execute(_REBUILD.format(names="AND p.name = ANY(%(names)s)" if names else ""),
                       params)


def block_size_for(span: int, n: int) -> int | None:
    """The block size that reads the fewest rows for ``n`` buckets over ``span`` steps (about
    span/size blocks plus n·size edge points), or None when points alone read fewer."""
    cost, size = min((span / size + n * size, size) for size in BLOCK_SIZES)
    return size if cost < span / 4 else None


# Each bucket [a, b) of the grid (a = lo + ceil(i·span/n), as in postgres_buckets.lateral) is
# cut at the block boundaries inside it: [a, ba) and [bb, b) are read as points, [ba, bb) as
# whole blocks. Then the parts of a bucket are combined: counts and sums add up, extremes take
# the extreme, first/last finite value come from the smallest/largest [step, value] pair.
_PART = f"""
    min(step) AS step_start, max(step) AS step_end, count(*) AS count, count(value) AS finite,
    min(value) AS vmin, max(value) AS vmax, sum(value) AS vsum,
    min(step) FILTER (WHERE kind = {FINITE}) AS first_step,
    (min(ARRAY[step::float8, value]) FILTER (WHERE kind = {FINITE}))[2] AS first,
    max(step) FILTER (WHERE kind = {FINITE}) AS last_step,
    (max(ARRAY[step::float8, value]) FILTER (WHERE kind = {FINITE}))[2] AS last
    FROM metric_points WHERE experiment_id = %(experiment_id)s AND name = %(name)s
"""
_BUCKETS = f"""
WITH grid AS (
    SELECT i, %(lo)s::int8 + (i * %(span)s::int8 + %(n)s::int8 - 1) / %(n)s::int8 AS a,
              %(lo)s::int8 + ((i + 1) * %(span)s::int8 + %(n)s::int8 - 1) / %(n)s::int8 AS b
    FROM generate_series(0::int8, %(n)s::int8 - 1) AS i
), cut AS (
    SELECT i, a, b, least(b, (a + %(size)s::int8 - 1) / %(size)s * %(size)s) AS ba,
           greatest(least(b, (a + %(size)s::int8 - 1) / %(size)s * %(size)s),
                    b / %(size)s * %(size)s) AS bb
    FROM grid
), parts AS (
    -- OFFSET 0 keeps this a per-bucket index range scan: as a plain join (only range
    -- conditions) the planner may test every block against every bucket.
    SELECT c.i, r.* FROM cut c, LATERAL (
        SELECT step_start, step_end, count, finite, vmin, vmax, vsum, first_step, first,
               last_step, last
        FROM metric_rollups WHERE experiment_id = %(experiment_id)s AND name = %(name)s
            AND block_size = %(size)s AND block >= c.ba / %(size)s AND block < c.bb / %(size)s
        OFFSET 0) r
    UNION ALL
    SELECT c.i, head.* FROM cut c,
        LATERAL (SELECT {_PART} AND step >= c.a AND step < c.ba) head WHERE head.count > 0
    UNION ALL
    SELECT c.i, tail.* FROM cut c,
        LATERAL (SELECT {_PART} AND step >= c.bb AND step < c.b) tail WHERE tail.count > 0
)
SELECT i, min(step_start), max(step_end), sum(count)::int8, sum(finite)::int8, min(vmin),
       max(vmax),
       sum(vsum),
       (min(ARRAY[first_step::float8, first]) FILTER (WHERE first_step IS NOT NULL))[2],
       (max(ARRAY[last_step::float8, last]) FILTER (WHERE last_step IS NOT NULL))[2]
FROM parts GROUP BY i ORDER BY i
"""


def buckets(cursor: Any, experiment_id: uuid.UUID, name: str, lo: int, hi: int, n: int,
            size: int) -> list[Bucket]:
    """At most ``n`` buckets over [lo, hi] from blocks of ``size`` steps and edge points."""
    cursor.execute("SET LOCAL jit = off")  # compiling costs more than this query runs
    cursor.execute(_BUCKETS, {"experiment_id": experiment_id, "name": name, "lo": lo,
                              "span": hi - lo + 1, "n": n, "size": size})
    return [
        Bucket(int(i), int(start), int(end), first, last, vmin, vmax,
               vsum / finite if finite else None, int(count), int(count - finite))
        for i, start, end, count, finite, vmin, vmax, vsum, first, last in cursor.fetchall()
    ]
