"""`normlab train`: run one experiment in this process: a progress bar on stderr, the summary
on stdout (a table for people, or JSON with ``--json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.errors import EXIT_USAGE, CliError
from app.cli.output import emit, emit_json, table
from app.cli.summary import summary_rows
from worker.training.config import ExperimentConfig
from worker.training.datasets import OFFLINE_ALTERNATIVE, DatasetUnavailableError
from worker.training.device import DeviceUnavailableError, set_threads
from worker.training.job import run_job
from worker.training.result import MetricPoint, TrainResult, TrainSummary, encode_float


def summary_text(summary: TrainSummary, title: str) -> str:
    return table(title, summary_rows(summary.model_dump(mode="json")))


def run_training(
    config: ExperimentConfig, *, out: Path | None, device: str | None, checkpoint: Path | None,
    threads: int | None = None, as_json: bool = False,
) -> TrainSummary:
    set_threads(threads)
    try:
        result = _train(config, out=out, device=device, checkpoint=checkpoint)
    except DatasetUnavailableError as exc:
        raise CliError(dataset_problem(config.dataset.name, exc), EXIT_USAGE) from exc
    except DeviceUnavailableError as exc:
        raise CliError(f"{exc}: train on the CPU with --device cpu (or resources.device: auto)",
                       EXIT_USAGE) from exc
    if as_json:
        emit_json({"config": config.model_dump(mode="json"), "device": result.device,
                   "summary": result.summary.model_dump(mode="json")})
    else:
        emit(summary_text(result.summary, f"{config.name} on {result.device}"))
    return result.summary


def dataset_problem(name: str, exc: DatasetUnavailableError) -> str:
    """One line: what is missing, and the offline dataset to use instead."""
    first = str(exc).splitlines()[0].rstrip(".")
    fix = OFFLINE_ALTERNATIVE.get(name, "digits")
    return (f"dataset {name!r} is not available offline ({first}; --debug lists the mirrors "
            f"tried): train on a bundled dataset with --set dataset.name={fix}")


def _train(
    config: ExperimentConfig, *, out: Path | None, device: str | None, checkpoint: Path | None
) -> TrainResult:
    console = Console(stderr=True)
    points: list[MetricPoint] = []
    last: dict[str, float] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,  # gone when done: an error or the summary stands alone
        disable=not console.is_terminal,  # a bar is noise in a log file
    ) as progress:
        task = progress.add_task("epochs", total=config.training.epochs, info="starting")

        def on_metrics(batch: Sequence[MetricPoint]) -> None:
            if out is not None:
                points.extend(batch)
            step = 0
            for p in batch:
                last[p.name] = p.value
                step = max(step, p.step)
                if p.name == "train_loss":
                    progress.update(task, completed=p.epoch)
            info = f"step {step}  loss {last.get('loss', float('nan')):.4f}"
            if "val_accuracy" in last:
                info += f"  val acc {last['val_accuracy']:.4f}"
            progress.update(task, info=info)

        result = run_job(
            config, on_metrics=on_metrics, device_override=device, checkpoint_path=checkpoint
        )
    if out is not None:
        payload = {
            "config": config.model_dump(mode="json"),
            "summary": result.summary.model_dump(mode="json"),
            "metrics": [
                {
                    "name": p.name,
                    "step": p.step,
                    "epoch": p.epoch,
                    "value": encode_float(p.value),
                    "wall_time": p.wall_time,
                }
                for p in points
            ],
        }
        out.write_text(json.dumps(payload))
    return result
