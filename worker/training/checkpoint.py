"""Checkpoints as safetensors: tensors plus the config as metadata. Nothing is ever unpickled."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from worker.training.config import ExperimentConfig
from worker.training.model import MLP

FORMAT = "normlab-checkpoint-v1"


def save_checkpoint(path: Path, model: MLP, config: ExperimentConfig) -> None:
    """Write every parameter and BN buffer, atomically (temp file + rename)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    layers = model.layer_items()
    metadata = {
        "format": FORMAT,
        "config": config.model_dump_json(),
        "n_features": str(layers[0][1].linear.in_features),
        "n_classes": str(layers[-1][1].linear.out_features),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[MLP, ExperimentConfig]:
    """Rebuild the model in evaluation mode, predicting exactly as it did when saved."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a NormLab checkpoint")
    config = ExperimentConfig.model_validate_json(metadata["config"])
    model = MLP(config.model, int(metadata["n_features"]), int(metadata["n_classes"]))
    model.load_state_dict(load_file(str(path), device="cpu"))
    model.to(torch.device(device)).eval()
    return model, config
