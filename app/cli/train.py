"""`normlab train`: run one experiment in this process, with a progress bar and a summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli.summary import summary_rows
from worker.training.config import ExperimentConfig
from worker.training.job import run_job
from worker.training.result import MetricPoint, TrainSummary, encode_float


def summary_table(summary: TrainSummary, title: str) -> Table:
    table = Table(title=title, show_header=False)
    for key, text in summary_rows(summary.model_dump(mode="json")):
        table.add_row(key, text)
    return table


def run_training(
    config: ExperimentConfig, *, out: Path | None, device: str | None, checkpoint: Path | None
) -> TrainSummary:
    console = Console(stderr=True)
    points: list[MetricPoint] = []
    last: dict[str, float] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
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
    console.print(summary_table(result.summary, f"{config.name} on {result.device}"))
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
    return result.summary
