"""Prediction cost: the engine's end-of-run measurement, repeated to show its noise.

Builds the seed network (``geron-bn``: 784-300-100-10, ELU, BN before every activation incl. the
logits) with BN statistics moved off their defaults (timing does not depend on the values), and
runs ``measure_prediction_cost`` — the very function a run calls — ``--runs`` times. Prints each
run's µs/sample and ratios, then per figure the median and the min–max over runs: the spread is
the noise one run's summary carries.

    python bench/prediction_cost.py [--runs 10] [--device cpu|cuda] [--threads N] [--preset P]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.training.model import MLP
from worker.training.prediction_cost import measure_prediction_cost
from worker.training.presets import build_config

FIELDS = ("trained_us", "folded_us", "no_bn_us", "trained_vs_no_bn", "folded_vs_no_bn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--preset", default="geron-bn")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_config({}, args.preset).model
    torch.manual_seed(0)
    model = MLP(config, 784, 10).to(args.device)
    with torch.no_grad():
        for bn in model.bn_layers().values():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    print(f"{args.preset} {config.hidden_layers} on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    runs = []
    for i in range(args.runs):
        started = time.perf_counter()
        costs = measure_prediction_cost(model, config)
        took = time.perf_counter() - started
        runs.append(costs)
        print(f"run {i + 1}: {took:.2f} s  " + "  ".join(
            f"b{c.batch_size}: {c.trained_us:.2f}/{c.folded_us:.2f}/{c.no_bn_us:.2f} µs "
            f"({c.trained_vs_no_bn:.2f}x, {c.folded_vs_no_bn:.2f}x)" for c in costs))
    print(f"\nover {args.runs} runs: median [min–max]")
    for k, batch in enumerate(c.batch_size for c in runs[0]):
        for field in FIELDS:
            values = [getattr(r[k], field) for r in runs]
            print(f"  batch {batch:5d} {field:17s} {statistics.median(values):9.3f} "
                  f"[{min(values):.3f}–{max(values):.3f}]")


if __name__ == "__main__":
    main()
