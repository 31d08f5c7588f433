"""Running the service processes: the API (with its embedded worker) and Celery workers."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys

import typer
import uvicorn

from app.core.config import Settings, get_settings
from app.db import keys
from app.db.migrate import SchemaNotMigratedError, check_migrated, upgrade
from app.db.session import session_scope

WORKER_APP = "worker.tasks:celery_app"


def worker_argv(queues: str, concurrency: int, name: str = "normlab@%h") -> list[str]:
    return [
        "-A",
        WORKER_APP,
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


def run_worker(queues: str, concurrency: int) -> None:
    from worker.tasks import celery_app

    celery_app.worker_main(worker_argv(queues, concurrency)[2:])


def run_reconciler(once: bool) -> None:
    import logging
    import threading

    from app.dispatch import CeleryDispatcher
    from worker.reconciler import reconcile_once, run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s reconciler %(message)s")
    settings = get_settings()
    dispatcher = CeleryDispatcher(settings)
    if once:
        sweep = reconcile_once(settings, dispatcher)
        typer.echo(f"re-sent {len(sweep.resend)}, requeued {sweep.requeued}, "
                   f"failed {sweep.failed}, cancelled {sweep.cancelled}")
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


def serve(host: str, port: int) -> None:
    from app.main import create_app

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
    embedded_worker = None
    if settings.embedded:
        # Training never runs in the API's process: a worker process of its own, same task code.
        embedded_worker = subprocess.Popen(
            [sys.executable, "-m", "celery", *worker_argv("gpu,cpu", 1, "embedded@%h")]
        )
        typer.echo(
            f"embedded worker started (pid {embedded_worker.pid}); "
            f"database {settings.database_url}",
            err=True,
        )
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        if embedded_worker is not None:
            embedded_worker.send_signal(signal.SIGTERM)
            try:
                embedded_worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                embedded_worker.kill()
