"""The fused step with every per-step input on the device, so that CUDA can capture it.

``StaticStep`` keeps the epoch's permutations, the position in the epoch and a ``[capacity, K,
row width]`` metrics buffer on the device; one full-batch step reads its batch through a device
offset, writes its row at a device row index and advances both — nothing the host must change
between steps. On CUDA the step is captured in a ``torch.cuda.CUDAGraph`` (one graph per value
of ``logged``) after a few eager warm-up steps and then replayed; elsewhere, or when capture is
impossible, the same body runs eagerly and ``reason`` says why. A short last batch (the
training split not a multiple of the batch size) has another shape: it runs eagerly.
"""

from __future__ import annotations

import logging

import torch

from worker.training.fused_group import Group, step_row
from worker.training.step_columns import device_columns

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps (on a side stream) before capture, as torch's docs require


def capture_obstacle(group: Group, device: torch.device) -> str | None:
    """Why the step of ``group`` cannot be captured on ``device`` (``None``: it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if group.optimizer.kind == "adam":
        # torch's (non-capturable) Adam computes the bias corrections on the host every step.
        return "adam's bias correction changes on the host every step"
    return None


class StaticStep:
    def __init__(self, group: Group, perms: torch.Tensor, batch_size: int, capacity: int) -> None:
        self.group, self.bs = group, batch_size
        device = perms.device
        self.perms = perms.clone()
        self.offset = torch.zeros((), dtype=torch.long, device=device)
        self.arange = torch.arange(batch_size, device=device)
        width = len(device_columns()) + group.columns.width
        self.rows = torch.zeros(capacity, len(group.runs), width, device=device)
        self.row_index = torch.zeros(1, dtype=torch.long, device=device)
        self.reason = capture_obstacle(group, device)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.eager_steps = 0

    @property
    def mode(self) -> str:
        return "cuda_graph" if self.reason is None else f"eager: {self.reason}"

    def start_epoch(self, perms: torch.Tensor, index: int) -> None:
        self.perms.copy_(perms)
        self.offset.fill_(index * self.bs)

    def take_rows(self, n: int) -> torch.Tensor:
        """The ``n`` pending rows (still on the device); the buffer starts over."""
        rows = self.rows[:n]
        self.row_index.zero_()
        return rows

    def _body(self, logged: bool) -> None:
        idx = self.perms.index_select(1, self.offset + self.arange)
        xb, yb = self.group.batch(idx)
        row = step_row(self.group, xb, yb, logged)
        self.rows.index_copy_(0, self.row_index, row.unsqueeze(0))
        self.row_index.add_(1)
        self.offset.add_(self.bs)

    def run(self, logged: bool) -> None:
        """One full-batch step."""
        if self.reason is not None:
            self._body(logged)
            return
        graph = self.graphs.get(logged)
        if graph is None and self.eager_steps < WARMUP_STEPS:
            self.eager_steps += 1
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._body(logged)
            torch.cuda.current_stream().wait_stream(stream)
            return
        if graph is None:
            graph = self._capture(logged)
            if graph is None:
                self._body(logged)
                return
        graph.replay()
        self.group.optimizer.steps += 1  # the Python-side count is not part of the graph

    def _capture(self, logged: bool) -> torch.cuda.CUDAGraph | None:
        graph = torch.cuda.CUDAGraph()
        steps = self.group.optimizer.steps
        try:
            with torch.cuda.graph(graph):
                self._body(logged)  # recorded, not run
        except RuntimeError as exc:  # e.g. an op that syncs with the host
            self.reason = f"capture failed: {exc}"
            log.warning("fused step runs eagerly: %s", self.reason)
            self.graphs.clear()
            torch.cuda.synchronize()
            self.group.optimizer.steps = steps
            return None
        self.group.optimizer.steps = steps
        self.graphs[logged] = graph
        return graph

    def run_short(self, lo: int, hi: int, logged: bool) -> None:
        """The short last batch of an epoch, eagerly (its shape differs from the graph's)."""
        xb, yb = self.group.batch(self.perms[:, lo:hi])
        row = step_row(self.group, xb, yb, logged)
        self.rows.index_copy_(0, self.row_index, row.unsqueeze(0))
        self.row_index.add_(1)
