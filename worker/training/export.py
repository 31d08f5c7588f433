"""A trained model as a self-describing safetensors file that needs no NormLab to predict.

Tensors (float32; ``<layer>`` is ``hidden1`` … ``hiddenN``, ``outputs``, in forward order):

- ``input.mean``, ``input.std`` ``[n_features]``: predict on ``(x − input.mean) / input.std``;
- ``<layer>.weight`` ``[out, in]`` and ``<layer>.bias`` ``[out]``: ``z = h @ weight.T + bias``
  (folded: every layer has a bias; as trained, a layer followed directly by BN has none);
- as trained only, per BN layer: ``<layer>.bn.running_mean``, ``<layer>.bn.running_var``, and
  ``<layer>.bn.beta`` / ``<layer>.bn.gamma`` when ``center`` / ``scale`` is on.

Metadata (strings): ``format`` (``normlab-model-v1``), ``folded`` (``true``/``false``),
``layers`` and ``widths`` (JSON lists; widths from the input to the logits), ``activation``
(applied after every hidden layer, never to the logits), ``batch_norm`` (JSON: placement,
epsilon, center, scale, on_output; ``null`` when folded or off), ``step`` and ``config`` (the
experiment's JSON config). See docs/export.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from worker.training.checkpoint import checkpoint_step, load_checkpoint, load_standardization
from worker.training.folding import fold_batch_norm
from worker.training.model import MLP

FORMAT = "normlab-model-v1"


class MissingStandardizationError(ValueError):
    """The checkpoint predates stored input statistics, and its inputs were standardized."""


def _tensors(model: MLP, *, with_bn: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, layer in model.layer_items():
        out[f"{name}.weight"] = layer.linear.weight
        if layer.linear.bias is not None:
            out[f"{name}.bias"] = layer.linear.bias
        if with_bn and layer.bn is not None:
            bn = layer.bn
            out[f"{name}.bn.running_mean"] = bn.running_mean
            out[f"{name}.bn.running_var"] = bn.running_var
            if bn.beta is not None:
                out[f"{name}.bn.beta"] = bn.beta
            if bn.gamma is not None:
                out[f"{name}.bn.gamma"] = bn.gamma
    return out


def export_model(checkpoint: Path, target: Path, *, folded: bool) -> None:
    """Write the checkpoint's model, folded or as trained, to ``target`` (see the module doc).
    Raises ``MissingStandardizationError`` when the input statistics cannot be known."""
    model, config = load_checkpoint(checkpoint)
    layers = model.layer_items()
    n_features = layers[0][1].linear.in_features
    standardization = load_standardization(checkpoint)
    if standardization is None:
        if config.dataset.standardize:
            raise MissingStandardizationError(
                "this checkpoint was written before checkpoints kept the input standardization; "
                "train the experiment again to export it"
            )
        standardization = (torch.zeros(n_features), torch.ones(n_features))
    bn_cfg = config.model.batch_norm
    with_bn = not folded and bn_cfg.enabled
    source = fold_batch_norm(model, config.model) if folded else model
    tensors = {
        "input.mean": standardization[0],
        "input.std": standardization[1],
        **_tensors(source, with_bn=with_bn),
    }
    metadata = {
        "format": FORMAT,
        "folded": json.dumps(folded),
        "layers": json.dumps([name for name, _ in layers]),
        "widths": json.dumps([n_features, *(layer.linear.out_features for _, layer in layers)]),
        "activation": config.model.activation,
        "batch_norm": json.dumps(
            bn_cfg.model_dump(include={"placement", "epsilon", "center", "scale", "on_output"})
            if with_bn
            else None
        ),
        "step": str(checkpoint_step(checkpoint)),
        "config": config.model_dump_json(),
    }
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
        str(target),
        metadata=metadata,
    )
