"""Running the service processes: the API (with its embedded worker) and Celery workers."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import typer
import uvicorn

from app.core import telemetry
from app.core.config import Settings, get_settings
from app.db import keys
from app.db.migrate import SchemaNotMigratedError, check_migrated, upgrade
from app.db.session import session_scope

WORKER_APP = "worker.tasks:celery_app"
EMBEDDED_WORKER_STOP_S = 60.0  # serve waits this long for its worker to stop, then kills it
# Lines an API process logs that say nothing an operator acts on (shown with --verbose):
# alembic's per-process migration check, kombu's "No hostname was supplied" for the embedded
# filesystem queue.
QUIET_API_LOGGERS = {"alembic": logging.WARNING, "kombu.connection": logging.ERROR}


# A worker's Celery node name: NAME or NAME@HOST (``%h``: this host). Letters, digits, ``-_.%``.
WORKER_NAME = re.compile(r"[A-Za-z0-9_.%-]{1,100}(@[A-Za-z0-9_.%-]{1,100})?")


def worker_name(name: str | None, prefix: str = "normlab") -> str:
    """The node name a worker runs under: ``NAME@<host>`` for a NAME without a host, and by
    default ``normlab-<pid>@<host>``, unique per process, so two workers on one host never
    share a name (Celery would warn, and the API and the logs could not tell them apart)."""
    if name is None:
        return f"{prefix}-{os.getpid()}@%h"
    if WORKER_NAME.fullmatch(name) is None:
        raise ValueError(f"invalid worker name {name!r}: use letters, digits, '-', '_', '.', "
                         "optionally followed by @HOST")
    return name if "@" in name else f"{name}@%h"


def worker_argv(queues: str, concurrency: int, name: str, quiet: bool = False) -> list[str]:
    """``celery`` arguments; ``quiet``: no banner (see ``worker.verbosity``)."""
    return [
        "-A",
        WORKER_APP,
        *(["--quiet"] if quiet else []),
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--hostname",
        name,
        "--loglevel",
        "INFO",
        # Remote control needs a fanout-capable broker; cancellation goes through the database.
        "--without-gossip",
        "--without-mingle",
    ]


def run_worker(queues: str, concurrency: int, name: str | None = None) -> None:
    try:
        node = worker_name(name)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    from worker.tasks import celery_app

    celery_app.worker_main(worker_argv(queues, concurrency, node,
                                       quiet=not get_settings().verbose)[2:])


def run_reconciler(once: bool) -> None:
    import logging
    import threading

    from app.dispatch import CeleryDispatcher
    from worker.reconciler import reconcile_once, run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s reconciler %(message)s")
    settings = get_settings()
    dispatcher = CeleryDispatcher(settings)
    if once:
        done = reconcile_once(settings, dispatcher)
        sweep = done.sweep
        typer.echo(f"queued past the grace period {done.past_grace} (a message in the broker "
                   f"for {done.in_broker}), re-sent {len(done.resent)}, requeued "
                   f"{sweep.requeued}, failed {sweep.failed}, cancelled {sweep.cancelled}")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_forever(settings, dispatcher, stop)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings, host: str) -> str | None:
    """Without API keys the service may only listen on loopback: anyone reaching it could
    train on its GPUs and read every experiment. Creates the bootstrap admin key if given."""
    with session_scope(settings.database_url) as session:
        if settings.bootstrap_admin_key:
            keys.create(session, owner="admin", admin=True, key=settings.bootstrap_admin_key)
        has_keys = keys.any_created(session)
    if is_loopback(host) or has_keys:
        return None
    return (f"binding {host} exposes the API beyond this machine and no API key exists; create "
            "one first (`normlab keys create --name NAME --admin`) or bind 127.0.0.1")


def make_app() -> Any:
    """The ASGI app of one API process (uvicorn's factory in each worker process)."""
    from app.main import create_app

    settings = get_settings()
    # The app's own lines (experiments queued or cancelled, warnings), beside uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not settings.verbose:
        for name, level in QUIET_API_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
    app = create_app(settings)
    # Everything imported so far (torch, pydantic models, SQLAlchemy) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise stall a request that
    # allocates many objects (a 10,000-point metric page) by tens of milliseconds.
    gc.collect()
    gc.freeze()
    return app


def dashboard_url(host: str, port: int) -> str:
    """The address a person on this machine opens (a wildcard bind is reachable on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def tcp_listener(host: str, port: int) -> socket.socket:
    """The listening socket for several worker processes, made with ``IPPROTO_TCP``.

    uvicorn's own (``Config.bind_socket``) leaves ``proto`` 0; accepted sockets inherit it, and
    asyncio then skips TCP_NODELAY, so every kept-alive request after the first waits for the
    client's delayed ACK, ≈40 ms on Linux (uvicorn issue 3149). A single process is unaffected:
    there asyncio creates the listener itself.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_api(host: str, port: int, workers: int, access_log: bool) -> None:
    verbose = get_settings().verbose
    options: dict[str, Any] = {"host": host, "port": port,
                               "log_level": "info" if verbose else "warning",
                               "access_log": access_log or verbose}
    if workers == 1:
        typer.echo(f"API on http://{host}:{port}", err=True)
        uvicorn.run(make_app(), **options)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("app.cli.service:make_app", factory=True, workers=workers,
                            **options)
    try:
        listener = tcp_listener(host, port)
    except OSError as exc:
        typer.echo(f"cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"API on http://{host}:{port} with {workers} worker processes", err=True)
    try:
        Multiprocess(config, sockets=[listener]).run()
    finally:
        listener.close()


def serve(host: str, port: int, workers: int = 2, access_log: bool = True) -> None:
    settings = get_settings()
    if settings.is_sqlite:
        upgrade(settings.database_url)
    else:
        try:
            check_migrated(settings.database_url)
        except SchemaNotMigratedError as exc:
            typer.echo(f"refusing to serve: {exc}", err=True)
            raise typer.Exit(2) from exc
    problem = exposure_problem(settings, host)
    if problem:
        typer.echo(f"refusing to serve: {problem}", err=True)
        raise typer.Exit(2)
    # The API processes and the embedded worker's jobs count into one directory: a scrape of
    # /metrics, whichever process answers it, sums them all (app.core.telemetry).
    counters = None if telemetry.shared_directory() else telemetry.share_between_processes()
    embedded_worker = None
    if settings.embedded:
        # Training never runs in the API's process: a worker process of its own, same task code.
        name = worker_name(None, "embedded")
        embedded_worker = subprocess.Popen(
            [sys.executable, "-m", "celery",
             *worker_argv("gpu,cpu", 1, name, quiet=not settings.verbose)]
        )
        typer.echo(
            f"embedded worker started (pid {embedded_worker.pid}); "
            f"database {settings.database_url}",
            err=True,
        )
    url = dashboard_url(host, port)
    typer.echo(f"NormLab is starting: open {url} (dashboard; API docs at /docs)", err=True)
    try:
        run_api(host, port, workers, access_log)
    finally:
        if embedded_worker is not None:
            embedded_worker.send_signal(signal.SIGTERM)
            try:
                # A running job checkpoints and hands back first; on a busy machine that took
                # longer than 15 s, and a worker killed mid-way logs its job's death as an error.
                embedded_worker.wait(timeout=EMBEDDED_WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                embedded_worker.kill()
        if counters is not None:
            telemetry.stop_sharing(counters)
