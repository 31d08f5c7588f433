"""`normlab submit` and `normlab status`: a small HTTP client of the service.

Results go to stdout (an id, a table, or JSON with ``--json``), progress to stderr. A refusal of
the server prints its reason (a 422: each field as ``loc: message``) and exits 2; an unreachable
server exits 4 (``app.cli.errors``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError, exit_code, unreachable
from app.cli.output import emit, emit_json, human, table
from app.cli.summary import summary_rows
from worker.training.config import ExperimentConfig
from worker.training.metricnames import produced_names

TERMINAL = {"succeeded", "diverged", "failed", "cancelled"}
POLL_S = 1.0  # between polls of a running experiment (the page cursor keeps its place)
SHOWN = ("status", "device", "worker", "attempt", "error", "created_at", "finished_at")
_HINTS = {401: " (give a key with --api-key or NORMLAB_API_KEY)"}


def problem(response: httpx.Response) -> CliError:
    """The server's refusal as one line per problem."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    if isinstance(detail, list):
        lines = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", [])]
            if loc[:1] == ["body"]:
                loc = loc[1:]
            lines.append(f"{'.'.join(loc) or '(body)'}: {item.get('msg', 'invalid')}")
        message = "\n".join(lines)
    else:
        message = f"error {response.status_code}: {detail}{_HINTS.get(response.status_code, '')}"
    return CliError(message, EXIT_USAGE if response.status_code < 500 else EXIT_FAILED)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise problem(response)
    return response.json()


@contextmanager
def _client(url: str, api_key: str | None) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            yield client
    except httpx.TransportError as exc:
        raise unreachable(url, exc) from exc


def submit(url: str, raw: dict[str, Any], *, watch: bool, api_key: str | None,
           as_json: bool = False) -> int:
    """Prints the new experiment's id (or JSON); with ``watch``, follows it to the end, prints
    its table (or JSON) and returns its status's exit code."""
    with _client(url, api_key) as client:
        experiment = _check(client.post("/api/v1/experiments", json=raw))
        if as_json and not watch:
            emit_json(experiment)
            return 0
        if not as_json:
            emit(experiment["id"])  # first, so a script has it while the run goes on
        if not watch:
            return 0
        final = _watch(client, experiment)
        _print(final, as_json)
        return exit_code(final["status"])


def _watch(client: httpx.Client, experiment: dict[str, Any]) -> dict[str, Any]:
    path = f"/api/v1/experiments/{experiment['id']}"
    epochs = experiment["config"]["training"]["epochs"]
    known = produced_names(ExperimentConfig.model_validate(experiment["config"]))
    names = ",".join(n for n in ("loss", "train_loss", "val_accuracy") if n in known)
    after, last = -1, {}
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("queued", total=epochs, info="")
        while True:
            experiment = _check(client.get(path))
            while True:  # the README's loop: the cursor goes back unchanged
                page = _check(client.get(f"{path}/metrics", params={
                    "after_step": after, "names": names, "limit": 10000}))
                for p in page["items"]:
                    last[p["name"]] = p
                after = page["next_after_step"]
                if not page["has_more"]:
                    break
            epoch = last.get("train_loss", {}).get("epoch", 0)
            info = f"step {max(after, 0)}"
            if "loss" in last:
                info += f"  loss {human(last['loss']['value'])}"
            if "val_accuracy" in last:
                info += f"  val acc {human(last['val_accuracy']['value'])}"
            progress.update(task, description=experiment["status"], completed=epoch, info=info)
            if experiment["status"] in TERMINAL:
                return experiment
            time.sleep(POLL_S)


def _print(experiment: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(experiment)
        return
    rows = [(key, experiment.get(key)) for key in SHOWN]
    rows += summary_rows(experiment.get("summary") or {})  # its own "status" is not repeated
    emit(table(f"{experiment['name']} ({experiment['id']})", rows))


def show_status(url: str, experiment_id: str, api_key: str | None, as_json: bool = False) -> None:
    with _client(url, api_key) as client:
        _print(_check(client.get(f"/api/v1/experiments/{experiment_id}")), as_json)
