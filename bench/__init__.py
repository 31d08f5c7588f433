"""Benchmarks (run from the repository root, e.g. ``python3 -m bench.vs_mlflow``)."""
