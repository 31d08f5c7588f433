"""Training throughput: the engine vs an idiomatic PyTorch loop, on the seed network.

The seed network (784-300-100-10, BN before every activation incl. the logits, ELU, He init,
SGD 0.01, batch 50; the ``geron-bn`` preset) trains on MNIST-shaped synthetic data, three ways,
in one process, alternating so that drift in machine speed hits all three alike:

  (a) idiomatic  TensorDataset + DataLoader(shuffle=True), ``loss.item()`` logged every step,
                 the same ``worker.training.model.MLP``;
  (b) engine     ``worker.training.loop.train`` with full per-step metrics (log_every_steps=1);
  (c) engine-off the engine with per-step logging off (log_every_steps larger than the run).

All three train only (no validation or test split), so they do the same work per epoch.

    python bench/train_throughput.py [--device cpu|cuda] [--samples 12000] [--epochs 1]
                                     [--repeats 15] [--clipping none|value|norm] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.training.config import DatasetConfig, ExperimentConfig, SyntheticConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.loop import build_optimizer, steps_per_epoch, train
from worker.training.model import MLP
from worker.training.presets import build_config
from worker.training.result import MetricPoint

Runner = Callable[[ExperimentConfig, DataSplits, torch.device], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_idiomatic(config: ExperimentConfig, data: DataSplits, device: torch.device) -> None:
    """What most PyTorch code looks like: a DataLoader, and the loss read back every step."""
    torch.manual_seed(config.training.seed)
    model = MLP(config.model, data.n_features, data.n_classes).to(device)
    optimizer = build_optimizer(model, config.optimizer)
    dataset = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    loader = DataLoader(dataset, batch_size=config.training.batch_size, shuffle=True)
    clip = config.clipping
    losses: list[float] = []
    for _ in range(config.training.epochs):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip.mode == "value":
                torch.nn.utils.clip_grad_value_(model.parameters(), clip.threshold)
            elif clip.mode == "norm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip.threshold)
            optimizer.step()
            losses.append(loss.item())
    _sync(device)


def run_engine(config: ExperimentConfig, data: DataSplits, device: torch.device) -> None:
    points: list[MetricPoint] = []
    result = train(config, data, device=device, on_metrics=points.extend)
    _sync(device)
    if result.status != "succeeded":
        raise RuntimeError(f"engine run ended {result.status}")


def make_config(args: argparse.Namespace, log_every_steps: int) -> ExperimentConfig:
    return build_config(
        {
            "dataset": {"name": "synthetic", "validation_size": 0, "test_size": 0},
            "clipping": {"mode": args.clipping, "threshold": 1.0},
            "training": {
                "epochs": args.epochs,
                "log_every_steps": log_every_steps,
                # Timing eval-mode prediction after training is not training (the idiomatic
                # loop does not do it either).
                "measure_prediction_cost": False,
            },
            "resources": {"device": args.device},
        },
        preset="geron-bn",
    )


def machine_description(device: torch.device) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    parts = [
        f"nproc {os.cpu_count()}",
        f"CPU {cpu}",
        f"torch {torch.__version__}",
        f"torch threads {torch.get_num_threads()}",
        f"python {platform.python_version()}",
    ]
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--samples", type=int, default=12_000, help="training samples")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per variant")
    parser.add_argument("--clipping", choices=["none", "value", "norm"], default="none")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.epochs < 1 or args.samples < 100:
        parser.error("need --repeats >= 1, --epochs >= 1 and --samples >= 100")

    device = torch.device(args.device)
    data = load_dataset(
        DatasetConfig(
            name="synthetic",
            validation_size=0,
            test_size=0,
            synthetic=SyntheticConfig(samples=args.samples, features=784, classes=10),
        ),
        seed=42,
    )
    full = make_config(args, log_every_steps=1)
    off = make_config(args, log_every_steps=1_000_000)
    variants: list[tuple[str, str, Runner, ExperimentConfig]] = [
        ("a", "idiomatic (DataLoader, .item() every step)", run_idiomatic, full),
        ("b", "engine, metrics every step", run_engine, full),
        ("c", "engine, logging off", run_engine, off),
    ]

    batch = full.training.batch_size
    steps = steps_per_epoch(len(data.y_train), batch, full.model.batch_norm.enabled)
    print(machine_description(device))
    print(
        f"seed net 784-300-100-10 BN+ELU, batch {batch}, {len(data.y_train)} samples "
        f"({steps} steps/epoch), {args.epochs} epochs/run, clipping {args.clipping}, "
        f"{args.repeats} runs per variant, alternating"
    )
    for _, _, runner, cfg in variants:  # warm-up: allocator, thread pool, kernels
        warm = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"epochs": 1})}, deep=True
        )
        runner(warm, data, device)

    times: dict[str, list[float]] = {key: [] for key, _, _, _ in variants}
    for _ in range(args.repeats):
        for key, _, runner, cfg in variants:
            _sync(device)
            t0 = time.perf_counter()
            runner(cfg, data, device)
            times[key].append((time.perf_counter() - t0) / args.epochs)

    n = len(data.y_train)
    median = {key: statistics.median(ts) for key, ts in times.items()}
    best = {key: min(ts) for key, ts in times.items()}
    print(f"\n{'variant':<48} {'s/epoch':>8} {'samples/s':>10} {'best':>7}  runs (s/epoch)")
    for key, label, _, _ in variants:
        runs = " ".join(f"{t:.3f}" for t in times[key])
        speed = n / median[key]
        print(f"({key}) {label:<44} {median[key]:>8.3f} {speed:>10,.0f} {best[key]:>7.3f}  {runs}")
    print("(s/epoch and samples/s: medians over the runs; best: the fastest run)")
    for stats, what in ((median, "medians"), (best, "best runs")):
        a, b, c = stats["a"], stats["b"], stats["c"]
        print(
            f"{what:>9}: engine speed-up over the idiomatic loop a/b = {a / b:.2f}x, "
            f"metrics overhead (b-c)/c = {100 * (b - c) / c:+.1f}%"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
