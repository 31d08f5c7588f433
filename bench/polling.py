"""Concurrent pollers: N clients, each on its own kept-alive HTTP/1.1 connection, sending one GET
after another for a fixed time, the way dashboards poll a run's status.

    python3 bench/polling.py URL [--clients 20] [--seconds 10] [--header 'Name: value']
                                 [--new-connections] [--etag]

The client is a lean one on purpose (uvloop when installed, httptools' C parser, no HTTP
library): on a 2-core machine it shares the CPUs with the server under test, and a heavier
client (httpx, aiohttp) would measure itself. Every answer other than 200 (or 304 with
``--etag``), every connection error and every timeout counts as an error. Latency is from
writing the request to the last byte of the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class PollResult:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        median = statistics.median(self.latencies) if self.latencies else float("nan")
        return (f"{self.clients} clients: {self.rate:,.0f} req/s, median {median * 1e3:.1f} ms, "
                f"p99 {self.percentile(0.99) * 1e3:.1f} ms, errors {self.errors} "
                f"(statuses {dict(sorted(self.statuses.items()))})")


class _Answer:
    """httptools callbacks: status, ETag, body size, completion."""

    def __init__(self) -> None:
        self.done = False
        self.etag: bytes | None = None
        self.size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"etag":
            self.etag = value

    def on_body(self, body: bytes) -> None:
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done = True


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, _Answer, bool]:
    answer = _Answer()
    parser = httptools.HttpResponseParser(answer)
    writer.write(request)
    while not answer.done:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("connection closed mid-answer")
        parser.feed_data(data)
    return parser.get_status_code(), answer, parser.should_keep_alive()


async def _client(url: str, headers: dict[str, str], deadline: float, result: PollResult,
                  *, new_connections: bool, etag: bool, timeout: float) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    base = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: application/json",
            *(f"{k}: {v}" for k, v in headers.items())]
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    last_etag: str | None = None
    while time.perf_counter() < deadline:
        lines = list(base)
        if etag and last_etag:
            lines.append(f"If-None-Match: {last_etag}")
        if new_connections:
            lines.append("Connection: close")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        started = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            status, answer, keep = await asyncio.wait_for(_exchange(*conn, request), timeout)
        except (OSError, ConnectionError, TimeoutError, httptools.HttpParserError):
            result.errors += 1
            if conn is not None:
                conn[1].close()
            conn = None
            await asyncio.sleep(0.01)
            continue
        result.latencies.append(time.perf_counter() - started)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status != 200 and not (etag and status == 304):
            result.errors += 1
        if answer.etag:
            last_etag = answer.etag.decode()
        if new_connections or not keep:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def _poll(url: str, clients: int, seconds: float, headers: dict[str, str],
                new_connections: bool, etag: bool, timeout: float) -> PollResult:
    result = PollResult(clients, seconds)
    started = time.perf_counter()
    await asyncio.gather(*(
        _client(url, headers, started + seconds, result, new_connections=new_connections,
                etag=etag, timeout=timeout)
        for _ in range(clients)
    ))
    result.seconds = time.perf_counter() - started
    return result


def poll(url: str, *, clients: int = 20, seconds: float = 10.0,
         headers: dict[str, str] | None = None, new_connections: bool = False,
         etag: bool = False, timeout: float = 10.0, warmup_s: float = 1.0) -> PollResult:
    """Run ``clients`` pollers against ``url`` for ``seconds`` (after an untimed warm-up)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if warmup_s > 0:
        asyncio.run(_poll(url, clients, warmup_s, headers or {}, new_connections, etag,
                          timeout))
    return asyncio.run(_poll(url, clients, seconds, headers or {}, new_connections, etag,
                             timeout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new connection per request (Connection: close)")
    parser.add_argument("--etag", action="store_true", help="send If-None-Match (304s count)")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    for clients in args.clients:
        print(poll(args.url, clients=clients, seconds=args.seconds, headers=headers,
                   new_connections=args.new_connections, etag=args.etag).line())


if __name__ == "__main__":
    main()
