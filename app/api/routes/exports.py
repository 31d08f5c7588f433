"""The trained model as a standalone safetensors file, folded or as trained (docs/export.md)."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.api.deps import CONFLICT, NOT_FOUND, ExperimentDep
from worker.training.export import MissingStandardizationError, export_model

router = APIRouter(prefix="/experiments", tags=["experiments"])


def download_name(name: str, experiment_id: uuid.UUID, folded: bool) -> str:
    """An ASCII file name safe in a Content-Disposition header and on any file system."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "experiment"
    return f"{stem}-{experiment_id}-{'folded' if folded else 'trained'}.safetensors"


@router.get(
    "/{experiment_id}/model", response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "safetensors file (tensor names: docs/export.md)"},
               **NOT_FOUND, **CONFLICT},
)
def get_model(
    access: ExperimentDep,
    folded: Annotated[bool, Query(description="Fold BN into the linear layers")] = False,
) -> FileResponse:
    """The latest checkpoint's model with its input standardization, loadable without NormLab:
    `<layer>.weight`/`.bias`, `input.mean`/`input.std`, BN tensors unless folded; metadata
    `activation`, `layers`, `widths`, `batch_norm`, `config`."""
    experiment_id = access.id
    experiment = access.record()
    checkpoint = access.caller.settings.checkpoint_path(experiment_id)
    if not checkpoint.is_file():
        raise HTTPException(404, f"experiment {experiment_id} has no checkpoint yet")
    fd, name = tempfile.mkstemp(prefix="normlab-model-", suffix=".safetensors")
    os.close(fd)
    try:
        export_model(checkpoint, Path(name), folded=folded)
    except MissingStandardizationError as exc:
        os.unlink(name)
        raise HTTPException(409, str(exc)) from exc
    except BaseException:
        os.unlink(name)
        raise
    return FileResponse(name, media_type="application/octet-stream",
                        filename=download_name(experiment.name, experiment_id, folded),
                        background=BackgroundTask(os.unlink, name))
