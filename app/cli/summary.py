"""A run's summary as table rows, for `normlab train` and `normlab status` alike."""

from __future__ import annotations

from typing import Any

from app.cli.output import human


def _prediction_cost(entry: dict[str, Any]) -> tuple[str, str]:
    def us(key: str) -> str:
        value = entry[key]
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    def ratio(key: str) -> str:
        value = entry[key]
        return f"{value:.2f}×" if isinstance(value, float) else str(value)

    return (
        f"prediction µs/sample, batch {entry['batch_size']}",
        f"trained {us('trained_us')} · folded {us('folded_us')} · no BN {us('no_bn_us')} "
        f"(vs no BN: {ratio('trained_vs_no_bn')} trained, {ratio('folded_vs_no_bn')} folded)",
    )


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, text)`` per summary field (JSON form); prediction costs one row per batch size."""
    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        if key == "prediction_cost" and isinstance(value, list):
            rows.extend(_prediction_cost(entry) for entry in value)
        else:
            rows.append((key, human(value)))  # rounded, with the one null marker
    return rows
