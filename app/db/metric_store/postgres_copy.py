"""Binary COPY data for a batch of points, built column by column with numpy.

psycopg's ``write_row`` formats a row in Python (≈ 5 µs a point with its adapters, in the metric
writer's process, whose CPU a training using every core pays for: docs/benchmarks.md); here a
batch costs a few numpy passes over its bytes. The layout is PostgreSQL's binary COPY format:
a signature, then per row a field count and each field as a length (-1: NULL) and its
big-endian bytes, then a trailer."""

from __future__ import annotations

import struct
import uuid

import numpy as np
import numpy.typing as npt

from app.db.metric_store.interface import Columns
from app.db.models import FINITE

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
_TRAILER = b"\xff\xff"
# (step, epoch, the value's length) and (kind, wall_time), each field with its length first.
_MIDDLE = np.dtype([("n_step", ">i4"), ("step", ">i8"), ("n_epoch", ">i4"), ("epoch", ">i4"),
                    ("n_value", ">i4")])
_TAIL = np.dtype([("n_kind", ">i4"), ("kind", ">i2"), ("n_wall", ">i4"), ("wall", ">f8")])


def _scatter(buffer: npt.NDArray[np.uint8], at: npt.NDArray[np.int64],
             data: npt.NDArray[np.uint8]) -> None:
    """Row i of ``data`` (n × width bytes) into ``buffer`` from ``at[i]`` on."""
    buffer[(at[:, None] + np.arange(data.shape[1])).ravel()] = data.ravel()


def binary_copy(columns: Columns, experiment_id: uuid.UUID | None = None) -> bytes:
    """The COPY data of the rows (experiment_id if given, name, step, epoch, value, kind,
    wall_time), in the batch's order; value NULL where kind is not FINITE."""
    count = len(columns.name)
    distinct, code = columns.name_codes()
    # What precedes the step is the same for every row of one name: the field count, the
    # experiment id and the name.
    fields = struct.pack(">h", 7) + struct.pack(">i", 16) + experiment_id.bytes \
        if experiment_id is not None else struct.pack(">h", 6)
    heads = [fields + struct.pack(">i", len(b)) + b for b in (n.encode() for n in distinct)]
    head_size = np.array([len(h) for h in heads], np.int64)[code]
    finite = columns.kind == FINITE
    size = head_size + _MIDDLE.itemsize + 8 * finite + _TAIL.itemsize
    start = np.cumsum(size) - size + len(_SIGNATURE)
    buffer = np.empty(len(_SIGNATURE) + int(size.sum()) + len(_TRAILER), np.uint8)
    buffer[:len(_SIGNATURE)] = np.frombuffer(_SIGNATURE, np.uint8)
    buffer[len(buffer) - len(_TRAILER):] = np.frombuffer(_TRAILER, np.uint8)
    for name_code, head in enumerate(heads):
        rows = np.flatnonzero(code == name_code)
        _scatter(buffer, start[rows], np.tile(np.frombuffer(head, np.uint8), (len(rows), 1)))
    middle = np.empty(count, _MIDDLE)
    middle["n_step"], middle["step"] = 8, columns.step
    middle["n_epoch"], middle["epoch"] = 4, columns.epoch
    middle["n_value"] = np.where(finite, 8, -1)
    at = start + head_size
    _scatter(buffer, at, middle.view(np.uint8).reshape(count, _MIDDLE.itemsize))
    at += _MIDDLE.itemsize
    values = columns.value[finite].astype(">f8")
    _scatter(buffer, at[finite], values.view(np.uint8).reshape(len(values), 8))
    tail = np.empty(count, _TAIL)
    tail["n_kind"], tail["kind"] = 2, columns.kind
    tail["n_wall"], tail["wall"] = 8, columns.wall_time
    _scatter(buffer, at + 8 * finite, tail.view(np.uint8).reshape(count, _TAIL.itemsize))
    return buffer.tobytes()
