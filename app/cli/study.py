"""`normlab study …`: run a study on a service or in this process, show its results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from app.cli.client import _check, _client
from app.cli.configfile import read_raw
from app.studies.presets import STUDY_PRESETS, UnknownStudyPresetError, preset_spec
from app.studies.spec import StudySpec
from worker.training.presets import apply_assignments

WATCH_POLL_S = 2.0


def load_spec(path: Path | None, preset: str | None, assignments: list[str]) -> dict[str, Any]:
    """The spec as a dict: the preset, the file over it, then each --set. Exits 2 on errors."""
    try:
        raw = read_raw(path)
        preset = preset or raw.pop("preset", None)
        raw = preset_spec(preset, raw) if preset else raw
        raw = apply_assignments(raw, assignments)
        StudySpec.model_validate(raw)
    except (OSError, json.JSONDecodeError, yaml.YAMLError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            lines = [f"  {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                     for e in exc.errors()]
            message = "invalid study spec:\n" + "\n".join(lines)
        elif isinstance(exc, UnknownStudyPresetError):
            message = str(exc)
        else:
            message = f"cannot read the study spec: {exc}"
        typer.echo(message, err=True)
        raise typer.Exit(2) from exc
    return raw


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _ci(ci: Any) -> str:
    return "—" if not ci else f"[{_num(ci[0])}, {_num(ci[1])}]"


def print_results(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    progress = doc["progress"]
    console.print(f"[bold]{doc.get('name', 'study')}[/bold] {doc.get('id', '(local)')}: "
                  f"{progress['finished']}/{progress['total']} finished "
                  f"{progress['by_status']}; response: {doc['response']['label']} "
                  f"(goal {doc['response']['goal']})")
    cells = Table(title="cells")
    factors = list(doc["cells"][0]["levels"]) if doc["cells"] else []
    for column in [*factors, "n", "mean", "95% CI", "median", "IQM", "diverged"]:
        cells.add_column(column)
    for c in doc["cells"]:
        cells.add_row(*c["levels"].values(), str(c["n_finished"]), _num(c["mean"]),
                      _ci(c["mean_ci"]), _num(c["median"]), _num(c["iqm"]),
                      f"{c['n_diverged']}/{c['n_finished']}")
    console.print(cells)
    effects = Table(title="paired contrasts (Δ = level − reference)")
    for column in ["factor", "level vs ref", "pairs", "mean Δ", "95% CI", "P(better)",
                   "Wilcoxon p", "Holm p", "d_z"]:
        effects.add_column(column)
    for c in doc["contrasts"]:
        effects.add_row(c["factor"], f"{c['level']} vs {c['reference']}", str(c["n_pairs"]),
                        _num(c["mean_diff"]), _ci(c["mean_diff_ci"]), _num(c["p_better"], 3),
                        _num(c["wilcoxon_p"], 2), _num(c["holm_p"], 2), _num(c["cohens_dz"], 3))
    console.print(effects)
    for i in doc.get("interactions", []):
        console.print(f"interaction {i['definition']}: {_num(i['mean'])} {_ci(i['ci'])} "
                      f"over {i['n_finite']} seeds")
    for c in doc["contrasts"]:
        console.print(f"• {c['verdict']}")
        for b in c.get("by_level", []):
            (factor, label), = b["at"].items()
            console.print(f"    at {factor}={label}: mean Δ {_num(b['mean_diff'])} "
                          f"{_ci(b['mean_diff_ci'])}, better in {b['n_wins']} of "
                          f"{b['n_pairs']} (ties {b['n_ties']})")


def run_remote(url: str, api_key: str | None, spec: dict[str, Any], watch: bool) -> None:
    with _client(url, api_key) as client:
        study = _check(client.post("/api/v1/studies", json=spec))
        typer.echo(study["id"])
        if not watch:
            return
        console = Console(stderr=True)
        last = None
        while True:
            doc = _check(client.get(f"/api/v1/studies/{study['id']}"))
            if doc["progress"] != last:
                last = doc["progress"]
                console.print(f"{last['finished']}/{last['total']} finished {last['by_status']}")
            if doc["progress"]["terminal"]:
                print_results(doc)
                return
            time.sleep(WATCH_POLL_S)


def show(url: str, api_key: str | None, study_id: str, as_json: bool) -> None:
    with _client(url, api_key) as client:
        doc = _check(client.get(f"/api/v1/studies/{study_id}"))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_results(doc)


def run_here(spec_raw: dict[str, Any], device: str | None, out: Path | None) -> None:
    from app.core.config import get_settings
    from app.studies.grid import cells
    from app.studies.local import run_local
    from worker.training.device import set_threads

    set_threads(get_settings().torch_threads)  # as a worker's: local runs may split the cores
    spec = StudySpec.model_validate(spec_raw)
    grid = cells(spec)
    console = Console(stderr=True)
    started = time.perf_counter()

    def on_member(i: int, member: Any, done: Any) -> None:
        console.print(f"[{i + 1}/{spec.n_members}] {grid[member.cell].describe(spec)} "
                      f"seed {member.seed}: {done.status} response {_num(done.response)}")

    doc = run_local(spec, device=device, on_member=on_member)
    doc["duration_s"] = round(time.perf_counter() - started, 1)
    print_results(doc)
    console.print(f"{spec.n_members} members in {doc['duration_s']} s")
    if out is not None:
        out.write_text(json.dumps(doc, indent=2))


def list_presets() -> None:
    for preset in STUDY_PRESETS:
        spec = StudySpec.model_validate(preset_spec(preset.name))
        typer.echo(f"{preset.name:36s} {spec.n_members:3d} members  {preset.description}")
