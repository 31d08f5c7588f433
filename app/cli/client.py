"""`normlab submit` and `normlab status`: a small HTTP client of the service."""

from __future__ import annotations

import time
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli.summary import summary_rows

TERMINAL = {"succeeded", "diverged", "failed", "cancelled"}


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        typer.echo(f"error {response.status_code}: {response.text}", err=True)
        raise typer.Exit(2)
    return response.json()


def _client(url: str, api_key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, timeout=30, headers=headers)


def submit(url: str, raw: dict[str, Any], *, watch: bool, api_key: str | None) -> None:
    with _client(url, api_key) as client:
        experiment = _check(client.post("/api/v1/experiments", json=raw))
        typer.echo(experiment["id"])
        if watch:
            final = _watch(client, experiment)
            _print(final)
            raise typer.Exit(0 if final["status"] == "succeeded" else 1)


def _watch(client: httpx.Client, experiment: dict[str, Any]) -> dict[str, Any]:
    path = f"/api/v1/experiments/{experiment['id']}"
    epochs = experiment["config"]["training"]["epochs"]
    after, last = -1, {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("queued", total=epochs, info="")
        while True:
            experiment = _check(client.get(path))
            page = _check(
                client.get(
                    f"{path}/metrics",
                    params={
                        "after_step": after,
                        "names": "loss,val_accuracy,train_loss",
                        "limit": 10000,
                    },
                )
            )
            for p in page["items"]:
                last[p["name"]] = p
            after = page["next_after_step"] if page["next_after_step"] is not None else after
            epoch = last.get("train_loss", {}).get("epoch", 0)
            info = f"step {max(after, 0)}"
            if "loss" in last:
                info += f"  loss {last['loss']['value']}"
            if "val_accuracy" in last:
                info += f"  val acc {last['val_accuracy']['value']:.4f}"
            progress.update(task, description=experiment["status"], completed=epoch, info=info)
            if experiment["status"] in TERMINAL:
                return experiment
            time.sleep(1.0)


def _print(experiment: dict[str, Any]) -> None:
    table = Table(title=f"{experiment['name']} ({experiment['id']})", show_header=False)
    for key in ("status", "device", "worker", "attempt", "error", "created_at", "finished_at"):
        table.add_row(key, str(experiment.get(key)))
    for key, text in summary_rows(experiment.get("summary") or {}):
        table.add_row(key, text)
    Console().print(table)


def show_status(url: str, experiment_id: str, api_key: str | None) -> None:
    with _client(url, api_key) as client:
        _print(_check(client.get(f"/api/v1/experiments/{experiment_id}")))
