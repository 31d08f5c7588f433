"""The broker's backlog: which experiments have a message waiting for a worker, read from the
broker's own data, so the reconciler re-sends exactly what the broker lost (docs/reliability.md).

- Redis (kombu's layout): each queue is a list (one more per priority step), and a message a
  worker has taken but not acknowledged sits in the ``unacked`` hash, its delivery time in the
  ``unacked_index`` sorted set. A delivered message counts as waiting only for ``delivered_s``
  (``NORMLAB_CLAIM_WINDOW_S``): a live worker claims its experiment within seconds; one that died
  first left it there (Redis would hand it out again only after the visibility timeout, hours).
- A fused group's message (``normlab.run_group``) carries a list of ids: each counts as held.
- The embedded filesystem queue: one file per message in the messages folder, removed when a
  worker takes it.

An unreadable message counts as no message: the worst outcome of a wrong "lost" is a duplicate,
which the worker refuses in milliseconds; a wrong "waiting" could strand an experiment.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import redis

# kombu.transport.redis: the separator of priority queue names, the priority steps, the keys.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"


def experiments_of(raw: bytes | str, tasks: Collection[str]) -> list[uuid.UUID]:
    """The experiment ids a serialized Celery message (protocol 2, JSON) of one of ``tasks``
    carries: one for a single experiment's job, several for a fused group's."""
    try:
        return _experiments_in(json.loads(raw), tasks)
    except ValueError:
        return []


def _experiments_in(message: Any, tasks: Collection[str]) -> list[uuid.UUID]:
    try:
        if message["headers"]["task"] not in tasks:
            return []
        body: str | bytes = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        first = json.loads(body)[0][0]
        return [uuid.UUID(i) for i in (first if isinstance(first, list) else [first])]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, binascii.Error):
        return []


def in_redis(url: str, queues: tuple[str, ...], tasks: Collection[str],
             delivered_s: float) -> set[uuid.UUID]:
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        names = [f"{q}{_PRIORITY_SEP}{p}" if p else q
                 for q in queues for p in (0, *_PRIORITY_STEPS)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.lrange(name, 0, -1)
        pipe.zrangebyscore(_UNACKED_INDEX, time.time() - delivered_s, "+inf")
        *lists, recent = pipe.execute()
        found = {i for items in lists for item in items for i in experiments_of(item, tasks)}
        for entry in client.hmget(_UNACKED, recent) if recent else []:
            if entry is None:
                continue
            try:  # an unacked entry is [message, exchange, routing key]
                found.update(_experiments_in(json.loads(entry)[0], tasks))
            except (ValueError, TypeError, IndexError):
                continue
    finally:
        client.close()
    return found


def in_folder(folder: Path, queues: tuple[str, ...], tasks: Collection[str]) -> set[uuid.UUID]:
    suffixes = tuple(f".{q}.msg" for q in queues)
    found: set[uuid.UUID] = set()
    for path in folder.iterdir():
        if not path.name.endswith(suffixes):
            continue
        try:
            raw = path.read_bytes()
        except OSError:  # taken by a worker meanwhile
            continue
        found.update(experiments_of(raw, tasks))
    return found
