"""`normlab export`: download an experiment's model as safetensors (docs/export.md)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import typer


def open_client(url: str, api_key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, timeout=300, headers=headers)


def _suggested_name(response: httpx.Response, experiment_id: str) -> str:
    """The server's download name, reduced to a plain file name in this directory."""
    found = re.search(r'filename="([^"]+)"', response.headers.get("content-disposition", ""))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", found.group(1)) if found else ""
    return name.lstrip(".") or f"{experiment_id}.safetensors"


def export(
    url: str, experiment_id: str, *, folded: bool, output: Path | None, api_key: str | None
) -> Path:
    """Stream the model into ``output`` (or the server's suggested name) via a temporary file,
    so an interrupted download never leaves a truncated model behind."""
    path = f"/api/v1/experiments/{experiment_id}/model"
    with (
        open_client(url, api_key) as client,
        client.stream("GET", path, params={"folded": "true" if folded else "false"}) as response,
    ):
        if response.status_code >= 400:
            response.read()
            typer.echo(f"error {response.status_code}: {response.text}", err=True)
            raise typer.Exit(2)
        target = output if output is not None else Path(_suggested_name(response, experiment_id))
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return target
