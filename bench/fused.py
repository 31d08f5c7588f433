"""Fused training vs the solo engine: K members one after another vs one fused run of K.

Two networks, each trained by K members that differ in learning rate (and, for digits, in the
seed: init, shuffling and split), measured side by side in one process, alternating solo and
fused so that drift in machine speed hits both alike:

  digits    3x100 sigmoid, BN on hidden layers (Ioffe & Szegedy's net), batch 50, digits data
  geron-bn  784-300-100-10 ELU, BN everywhere (the ``geron-bn`` preset), batch 50, MNIST-shaped
            synthetic data

Both paths are the full engine (metrics every step, epoch evaluation, activation percentiles).
Throughput is aggregate: K x steps x batch / wall time.

    python bench/fused.py [--device cpu|cuda] [--ks 1,8,32] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train_throughput import machine_description
from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.fused_loop import train_fused
from worker.training.fused_member import Member
from worker.training.loop import train
from worker.training.presets import build_config

NETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "digits": (
        "ioffe-mnist",
        {
            "dataset": {"name": "digits", "validation_size": 0.1, "test_size": 0.2},
            "training": {"epochs": 1000, "batch_size": 50},
        },
    ),
    "geron-bn": (
        "geron-bn",
        {
            "dataset": {
                "name": "synthetic",
                "validation_size": 0,
                "test_size": 0,
                "synthetic": {"samples": 10_000},
            },
            "training": {"epochs": 1000},
        },
    ),
}


def member_configs(net: str, k: int, steps: int, device: str) -> list[ExperimentConfig]:
    preset, raw = NETS[net]
    out = []
    for i in range(k):
        member = {
            **raw,
            "optimizer": {"learning_rate": 0.01 * (1 + i % 8)},
            "training": {
                **raw["training"],
                "max_steps": steps,
                "seed": i if net == "digits" else 0,
                # A fixed-budget timing of eval-mode prediction, not training: it would add the
                # same ~0.3 s per member to both paths and time itself against the other jobs.
                "measure_prediction_cost": False,
            },
            "resources": {"device": device},
        }
        out.append(build_config(member, preset=preset))
    return out


def solo(cfgs: list[ExperimentConfig], data: list[DataSplits], device: torch.device) -> None:
    for cfg, d in zip(cfgs, data, strict=True):
        result = train(cfg, d, device=device, on_metrics=lambda _: None)
        if result.status != "succeeded":
            raise RuntimeError(f"solo run ended {result.status}")


def fused(cfgs: list[ExperimentConfig], data: list[DataSplits], device: torch.device) -> None:
    members = [Member(c, d, on_metrics=lambda _: None) for c, d in zip(cfgs, data, strict=True)]
    for result in train_fused(members, device=device):
        if result.status != "succeeded":
            raise RuntimeError(f"fused member ended {result.status}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", default="1,8,32", help="group sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per member")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--nets", default="digits,geron-bn")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        # One thread by default: on a shared 2-core machine, OpenMP threads waiting for a busy
        # core dominate these small kernels and make every figure noise.
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",")]
    print(machine_description(device))
    print(f"{args.steps} steps per member, batch 50, {args.repeats} runs per variant, alternating")
    header = f"{'net':<9} {'K':>3} {'solo s':>8} {'fused s':>8} {'speed-up':>8} {'best':>7}"
    print(f"\n{header}  runs solo | fused")
    for net in args.nets.split(","):
        for k in ks:
            cfgs = member_configs(net, k, args.steps, args.device)
            cache: dict[int, DataSplits] = {}
            data = [
                cache.setdefault(c.training.seed, load_dataset(c.dataset, seed=c.training.seed))
                for c in cfgs
            ]
            warm = member_configs(net, min(k, 2), 5, args.device)
            solo(warm, data[: len(warm)], device)
            fused(warm, data[: len(warm)], device)
            times: dict[str, list[float]] = {"solo": [], "fused": []}
            order = [("solo", solo), ("fused", fused)]
            for repeat in range(args.repeats):
                # ABBA: on a shared machine the load drifts; alternating the order cancels it.
                for name, runner in order if repeat % 2 == 0 else order[::-1]:
                    _sync(device)
                    t0 = time.perf_counter()
                    runner(cfgs, data, device)
                    _sync(device)
                    times[name].append(time.perf_counter() - t0)
            s, f = statistics.median(times["solo"]), statistics.median(times["fused"])
            best = min(times["solo"]) / min(times["fused"])
            runs = (
                " ".join(f"{t:.2f}" for t in times["solo"])
                + " | "
                + " ".join(f"{t:.2f}" for t in times["fused"])
            )
            print(
                f"{net:<9} {k:>3} {s:>8.2f} {f:>8.2f} {s / f:>7.2f}x {best:>6.2f}x  {runs}",
                flush=True,
            )
    print(
        "(seconds for all K members: medians of the runs; speed-up = solo / fused medians; "
        "best = fastest solo run / fastest fused run)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
