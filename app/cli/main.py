"""The `normlab` command line. Results go to stdout, progress and problems to stderr; the exit
codes are in ``app.cli.errors`` (0 succeeded, 3 diverged, 1 failed or cancelled, 2 usage or
config error, 4 server unreachable)."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from app.cli.configfile import load_config
from app.cli.errors import Debug, ErrorHandlingGroup

cli = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="NormLab: batch-norm and gradient-clipping experiments. Exit codes: 0 succeeded, "
    "3 diverged, 1 failed or cancelled, 2 usage or config error, 4 server unreachable.",
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON, full precision")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", help="Also Celery's banner and task lines, uvicorn's startup and access log")]


def _version(show: bool) -> None:
    if show:
        try:
            typer.echo(f"normlab {version('normlab')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("normlab (not installed)")
        raise typer.Exit()


@cli.callback()
def _options(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks and the engine's log")] = False,
) -> None:
    Debug.enabled = debug
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        # Each mirror's failure is summed up in the one-line error (--debug shows them).
        logging.getLogger("worker.training.idx").setLevel(logging.ERROR)

ConfigArg = Annotated[
    Path | None, typer.Argument(help="Config file (.json or .yaml)", exists=True, dir_okay=False)
]
PresetOpt = Annotated[str | None, typer.Option(help="Preset applied underneath the config")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key.path=value (repeatable)")]
UrlOpt = Annotated[str, typer.Option(envvar="NORMLAB_URL", help="The service's base URL")]
KeyOpt = Annotated[str | None, typer.Option(envvar="NORMLAB_API_KEY", help="API key")]


def _export(**values: object) -> None:
    """Flags override environment variables: export them so settings (and children) see them."""
    for key, value in values.items():
        if value is not None:
            os.environ[f"NORMLAB_{key.upper()}"] = str(value)


@cli.command()
def train(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write result and all metrics as JSON")] = None,
    device: Annotated[str | None, typer.Option(help="Override resources.device")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Write a safetensors checkpoint")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="Torch intra-op threads (default: one per core)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train one experiment here: progress on stderr, the summary on stdout. Exits 0
    (succeeded), 3 (diverged) or 1 (cancelled)."""
    from app.cli.errors import exit_code
    from app.cli.train import run_training

    _, cfg = load_config(config, preset, set_ or [])
    summary = run_training(cfg, out=out, device=device, checkpoint=checkpoint, threads=threads,
                           as_json=as_json)
    raise typer.Exit(exit_code(summary.status))


@cli.command()
def presets(as_json: JsonOpt = False) -> None:
    """List the named presets, their datasets, and what needs a download."""
    from app.cli.output import columns, emit, emit_json
    from worker.training.datasets import OFFLINE_ALTERNATIVE, is_cached
    from worker.training.presets import PRESET_DESCRIPTIONS, preset_info

    infos = [preset_info(name) for name in PRESET_DESCRIPTIONS]
    if as_json:
        emit_json([{**info, "cached": is_cached(info["dataset"])} for info in infos])
        return
    rows = []
    for info in infos:
        dataset = info["dataset"]
        download = "no"
        if info["needs_download"]:
            download = "cached" if is_cached(dataset) else (
                f"yes (offline: --set dataset.name={OFFLINE_ALTERNATIVE[dataset]})")
        rows.append([info["name"], dataset, download, info["description"]])
    emit(columns(["PRESET", "DATASET", "DOWNLOAD", "DESCRIPTION"], rows))


@cli.command("config-reference")
def config_reference(
    out: Annotated[Path | None, typer.Option(help="Write it here (docs/config.md)")] = None,
) -> None:
    """Print the reference of every config field (type, default, bounds, meaning) as Markdown."""
    from app.cli.reference import reference

    text = reference()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@cli.command()
def migrate(database_url: Annotated[str | None, typer.Option()] = None) -> None:
    """Upgrade the database schema to the newest revision."""
    _export(database_url=database_url)
    from app.core.config import get_settings
    from app.db.migrate import head_revision, upgrade

    upgrade(get_settings().database_url)
    typer.echo(f"database at revision {head_revision()}")


@cli.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    database_url: Annotated[str | None, typer.Option()] = None,
    broker_url: Annotated[str | None, typer.Option(help="Given: API only (distributed)")] = None,
    data_dir: Annotated[Path | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="API processes (see docs/benchmarks.md, \"data path\")"
    )] = 2,
    access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the API. Without a broker URL, also run an embedded worker (SQLite, no Redis)."""
    _export(database_url=database_url, broker_url=broker_url, data_dir=data_dir,
            verbose=verbose or None)
    from app.cli.service import serve as run_serve

    run_serve(host, port, workers=workers, access_log=access_log)


@cli.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues")] = "gpu,cpu",
    device: Annotated[str | None, typer.Option(help="e.g. cuda:0; overrides auto")] = None,
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    database_url: Annotated[str | None, typer.Option()] = None,
    broker_url: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option(
        help="Worker name, NAME or NAME@HOST (default: normlab-<pid>@<host>); shown in each "
             "experiment's `worker` field and in the logs")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Serve this worker's Prometheus metrics on this port")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a Celery worker that trains queued experiments."""
    _export(database_url=database_url, broker_url=broker_url, worker_device=device,
            worker_metrics_port=metrics_port, verbose=verbose or None)
    from app.cli.service import run_worker

    run_worker(queues, concurrency, name)


@cli.command()
def submit(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag (repeatable)")] = None,
    watch: Annotated[bool, typer.Option(
        help="Show live progress until it finishes; exit with its status's code")] = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit an experiment to a running service; prints its id."""
    from app.cli.client import submit as do_submit

    raw, _ = load_config(config, preset, set_ or [])
    if tag:
        raw["tags"] = tag
    raise typer.Exit(do_submit(url, raw, watch=watch, api_key=api_key, as_json=as_json))


@cli.command()
def status(
    experiment_id: str, url: UrlOpt = "http://127.0.0.1:8000", api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an experiment's status and summary."""
    from app.cli.client import show_status

    show_status(url, experiment_id, api_key, as_json)


@cli.command("export")
def export_model(
    experiment_id: str,
    folded: Annotated[bool, typer.Option(help="Fold BN into the linear layers")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Target file")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Download an experiment's model as safetensors, loadable without NormLab (docs/export.md)."""
    from app.cli.export import export

    typer.echo(export(url, experiment_id, folded=folded, output=output, api_key=api_key))


@cli.command()
def reconcile(
    once: Annotated[bool, typer.Option(help="One pass, then exit")] = False,
    database_url: Annotated[str | None, typer.Option()] = None,
    broker_url: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Re-send lost queued experiments, take back those whose worker died, enforce time limits."""
    _export(database_url=database_url, broker_url=broker_url)
    from app.cli.service import run_reconciler

    run_reconciler(once)


keys_cli = typer.Typer(no_args_is_help=True, help="API keys (stored as hashes).")
cli.add_typer(keys_cli, name="keys")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="The owner: experiments belong to it")],
    admin: Annotated[bool, typer.Option(help="Sees and manages every owner's experiments")] = False,
    database_url: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a key; it is printed once and never stored in clear."""
    _export(database_url=database_url)
    from app.cli.keys import create

    create(name, admin)


@keys_cli.command("list")
def keys_list(database_url: Annotated[str | None, typer.Option()] = None) -> None:
    """List keys (ids, owners, admin flag, revocation), never the keys themselves."""
    _export(database_url=database_url)
    from app.cli.keys import show

    show()


@keys_cli.command("revoke")
def keys_revoke(key_id: str, database_url: Annotated[str | None, typer.Option()] = None) -> None:
    """Revoke a key by its id (as `keys list` shows it)."""
    _export(database_url=database_url)
    from app.cli.keys import revoke

    revoke(key_id)


study_cli = typer.Typer(no_args_is_help=True, help="Studies: seed-paired factorial grids.")
cli.add_typer(study_cli, name="study")
SpecArg = Annotated[
    Path | None, typer.Argument(help="Study spec (.yaml or .json)", exists=True, dir_okay=False)
]


@study_cli.command("run")
def study_run(
    spec: SpecArg = None,
    preset: Annotated[str | None, typer.Option(help="Study preset (normlab study presets)")] = None,
    set_: SetOpt = None,
    watch: Annotated[bool, typer.Option(help="Follow progress, then print the results")] = False,
    local: Annotated[bool, typer.Option(help="Train every member here, without a server")] = False,
    device: Annotated[str | None, typer.Option(help="--local: override resources.device")] = None,
    out: Annotated[Path | None, typer.Option(help="--local: write the results as JSON")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Submit a study (prints its id), or run it here with --local; --watch prints results."""
    from app.cli.study import load_spec, run_here, run_remote

    raw = load_spec(spec, preset, set_ or [])
    if local:
        run_here(raw, device, out)
    else:
        run_remote(url, api_key, raw, watch)


@study_cli.command("show")
def study_show(
    study_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="The raw results document")] = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Progress, per-cell statistics, paired contrasts and verdicts of a study."""
    from app.cli.study import show

    show(url, api_key, study_id, as_json)


@study_cli.command("presets")
def study_presets() -> None:
    """List the study presets."""
    from app.cli.study import list_presets

    list_presets()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
