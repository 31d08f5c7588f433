"""Running the service processes: the API (with its embedded worker) and Celery workers."""

from __future__ import annotations

import signal
import subprocess
import sys

import typer
import uvicorn

from app.core.config import get_settings
from app.db.migrate import SchemaNotMigratedError, check_migrated, upgrade

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
