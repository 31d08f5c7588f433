"""Checkpoints as safetensors: tensors plus JSON metadata. Nothing is ever unpickled.

A checkpoint holds the model (every parameter and BN buffer) and the config, enough to predict,
and the input standardization (``data.input_mean``/``data.input_std``) when the engine knows it;
the engine's checkpoints also hold the training state (optimizer, shuffling RNG, position in the
epoch, progress bookkeeping) under ``train.`` keys and ``train_state`` metadata, so a later
attempt resumes exactly where this one stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from worker.training.config import ExperimentConfig
from worker.training.model import MLP

FORMAT = "normlab-checkpoint-v1"
_TRAIN = "train."
_DATA = "data."


@dataclass
class TrainingState:
    """Where training stands: enough to continue as if it had never stopped."""

    step: int  # optimizer steps done
    epoch: int  # the epoch to continue (1-based)
    next_index: int  # the next batch index within that epoch (0: start a new epoch)
    epochs_completed: int
    elapsed_s: float  # training time of earlier attempts, for samples/s
    progress: dict[str, Any]  # RunProgress.state_dict()
    optimizer: dict[str, Any]  # torch optimizer state_dict
    shuffle_rng: torch.Tensor
    perm: torch.Tensor | None = None  # the epoch's permutation when stopped mid-epoch


def save_checkpoint(
    path: Path,
    model: MLP,
    config: ExperimentConfig,
    state: TrainingState | None = None,
    standardization: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write the model (and the training state and the inputs' ``(mean, std)``, if given)
    atomically: temp file + rename."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if standardization is not None:
        for key, array in zip(("input_mean", "input_std"), standardization, strict=True):
            tensors[_DATA + key] = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    layers = model.layer_items()
    metadata = {
        "format": FORMAT,
        "config": config.model_dump_json(),
        "n_features": str(layers[0][1].linear.in_features),
        "n_classes": str(layers[-1][1].linear.out_features),
    }
    if state is not None:
        state_tensors, meta = _pack_state(state)
        tensors.update(state_tensors)
        metadata["train_state"] = json.dumps(meta)
        metadata["step"] = str(state.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a NormLab checkpoint")
    return metadata


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[MLP, ExperimentConfig]:
    """Rebuild the model in evaluation mode, predicting exactly as it did when saved."""
    metadata = _metadata(path)
    config = ExperimentConfig.model_validate_json(metadata["config"])
    model = MLP(config.model, int(metadata["n_features"]), int(metadata["n_classes"]))
    model.load_state_dict(_model_tensors(load_file(str(path), device="cpu")))
    model.to(torch.device(device)).eval()
    return model, config


def _model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if not k.startswith((_TRAIN, _DATA))}


def load_standardization(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The inputs' ``(mean, std)`` the model was trained behind, if the checkpoint has them."""
    _metadata(path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if not {_DATA + "input_mean", _DATA + "input_std"} <= keys:
            return None
        return f.get_tensor(_DATA + "input_mean"), f.get_tensor(_DATA + "input_std")


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was taken at (0 for one without training state)."""
    return int(_metadata(path).get("step", 0))


def load_training_state(path: Path, model: MLP) -> TrainingState:
    """Load the model weights in place and return the training state to resume from."""
    metadata = _metadata(path)
    if "train_state" not in metadata:
        raise ValueError(f"{path} holds no training state to resume from")
    tensors = load_file(str(path), device="cpu")
    model.load_state_dict(_model_tensors(tensors))
    return _unpack_state(json.loads(metadata["train_state"]), tensors)


def _pack_state(state: TrainingState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"{_TRAIN}shuffle_rng": state.shuffle_rng.contiguous()}
    if state.perm is not None:
        tensors[f"{_TRAIN}perm"] = state.perm.detach().to("cpu").contiguous()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, values in state.optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_TRAIN}optim.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {
        "step": state.step,
        "epoch": state.epoch,
        "next_index": state.next_index,
        "epochs_completed": state.epochs_completed,
        "elapsed_s": state.elapsed_s,
        "progress": state.progress,
        "param_groups": state.optimizer["param_groups"],
        "optim_scalars": scalars,
    }
    return tensors, meta


def _unpack_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TrainingState:
    optim_state: dict[int, dict[str, Any]] = {
        int(pid): dict(values) for pid, values in meta["optim_scalars"].items()
    }
    prefix = f"{_TRAIN}optim."
    for name, tensor in tensors.items():
        if name.startswith(prefix):
            pid, key = name[len(prefix) :].split(".", 1)
            optim_state.setdefault(int(pid), {})[key] = tensor
    return TrainingState(
        step=meta["step"],
        epoch=meta["epoch"],
        next_index=meta["next_index"],
        epochs_completed=meta["epochs_completed"],
        elapsed_s=meta["elapsed_s"],
        progress=meta["progress"],
        optimizer={"state": optim_state, "param_groups": meta["param_groups"]},
        shuffle_rng=tensors[f"{_TRAIN}shuffle_rng"],
        perm=tensors.get(f"{_TRAIN}perm"),
    )
