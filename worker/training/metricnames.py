"""The metric names a config makes the engine record, derived without training: the one list the
API checks requested names against (an unknown name is an error, not an empty answer).

A test trains small configs of every shape and checks that what the engine emits is exactly
this list: a new metric must be added here, or that test fails.
"""

from __future__ import annotations

from worker.training.config import ExperimentConfig
from worker.training.datasets import split_count
from worker.training.evaluation import PERCENTILES
from worker.training.job import POOL_SIZES
from worker.training.model import Layer
from worker.training.step_columns import step_metrics
from worker.training.units import unit_state

OFFICIAL_TEST_SET = ("mnist", "fashion_mnist")  # 10,000 test images; test_size is not used
BN_STATISTICS = ("running_mean_abs", "running_var_mean")


def layer_names(config: ExperimentConfig) -> list[str]:
    """The network's layers in forward order, as ``model.MLP`` names them."""
    return [*(f"hidden{i}" for i in range(1, len(config.model.hidden_layers) + 1)), "outputs"]


def evaluated_splits(config: ExperimentConfig) -> list[str]:
    """The splits evaluated at each epoch end: those the config leaves non-empty."""
    ds = config.dataset
    pool = ds.synthetic_shape.samples if ds.name == "synthetic" else POOL_SIZES[ds.name]
    splits = []
    if split_count(ds.validation_size, pool, "validation_size") > 0:
        splits.append("val")
    if ds.name in OFFICIAL_TEST_SET or split_count(ds.test_size, pool, "test_size") > 0:
        splits.append("test")
    return splits


def produced_names(config: ExperimentConfig) -> list[str]:
    """Every metric name a run of ``config`` records (a diverged or short run may record fewer)."""
    layers = layer_names(config)
    bn = config.model.batch_norm
    bn_layers = [
        name for name in layers if bn.enabled and (name != "outputs" or bn.on_output)
    ]
    names = [*step_metrics(), *(f"grad_norm/{layer}" for layer in layers)]
    names += ["train_loss", "train_accuracy"]
    for split in evaluated_splits(config):
        names += [f"{split}_loss", f"{split}_accuracy"]
    names += [f"bn/{layer}/{stat}" for layer in bn_layers for stat in BN_STATISTICS]
    names += [f"act/{layer}/{label}" for layer in layers for label, _ in PERCENTILES]
    # Dead (ReLU) or saturated (sigmoid, tanh, ELU, SELU) units of the hidden layers; the
    # logits (identity) are not measured.
    state = unit_state(Layer(1, 1, config.model.activation, None, bn_first=True).activation)
    if state is not None:
        names += [f"units/{layer}/{state}" for layer in layers if layer != "outputs"]
    return names
