"""`modelbay export --pick`: time every backend that passes the check, on this machine, and choose.

Backends: "torch eager" (the original, as `modelbay serve` runs it), "torch.compile" (the same
module through torch.compile, when it compiles here) and the export (onnxruntime for ONNX, the
torch.export program for .pt2). torch.compile's answers are checked against eager's like the
export's. All are timed at every batch size in the same run, in interleaved rounds (round r starts
at backend r), so a noisy neighbour slows them alike; a figure is the median of the rounds. The
winner has the highest geometric mean of rows/s over the batch sizes: each batch size counts the
same, whatever its scale.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelbay.errors import ModelLoadError
from modelbay.export.check import Arrays, Model, Tolerance, compare, random_inputs
from modelbay.export.source import ExportSource
from modelbay.loading.compile import compile_runner
from modelbay.types import TensorSpec

ROUNDS = 5
WARMUP_CALLS = 2  # per backend and batch size: torch.compile compiles here, onnxruntime allocates


@dataclass
class Backend:
    """One way to serve the model.

    name:       "torch eager", "torch.compile", "onnxruntime" or "torch.export".
    run:        arrays in, arrays out, as a Runner.
    settings:   the modelbay.yaml fields that make `modelbay serve` run the model this way.
    problem:    why it cannot be chosen (it does not compile here, or fails the check); else None.
    rows_per_s: measured throughput per batch size.
    """

    name: str
    run: Model
    settings: dict[str, Any]
    problem: str | None = None
    rows_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Geometric mean of rows/s over the batch sizes measured (0 when none was)."""
        values = list(self.rows_per_s.values())
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def compiled_backend(
    source: ExportSource, cases: Sequence[tuple[str, Arrays]], tolerance: Tolerance, settings: dict[str, Any]
) -> Backend:
    """The source model through torch.compile, checked against eager on `cases` (this compiles
    it). Never raises for a model torch.compile cannot handle: `problem` says what happened."""
    try:
        runner = compile_runner(source.runner, str(source.weights))
    except ModelLoadError as exc:
        return Backend("torch.compile", source.runner, settings, f"cannot be used: {exc.message}")
    report = compare(source.runner, runner, source.output_names, cases, tolerance, "torch.compile")
    problem = None if report.passed else f"failed here: {report.failure()}"
    return Backend("torch.compile", runner, settings, problem)


def measure(
    backends: Sequence[Backend], specs: Sequence[TensorSpec], batch_sizes: Sequence[int], seconds: float
) -> None:
    """Fill each usable backend's `rows_per_s`, spending about `seconds` per backend and batch size.

    A backend that raises while timed gets that as its `problem` and is timed no further.
    """
    usable = [backend for backend in backends if backend.problem is None]
    rng = np.random.default_rng(1)
    for batch in batch_sizes:
        inputs = random_inputs(specs, batch, rng)
        calls = {backend.name: _calls_per_round(backend, inputs, seconds / ROUNDS) for backend in usable}
        samples: dict[str, list[float]] = {backend.name: [] for backend in usable}
        for round_ in range(ROUNDS):
            for backend in usable[round_ % len(usable) :] + usable[: round_ % len(usable)]:
                start = time.perf_counter()
                for _ in range(calls[backend.name]):
                    backend.run(inputs)
                samples[backend.name].append((time.perf_counter() - start) / calls[backend.name])
        for backend in usable:
            backend.rows_per_s[batch] = batch / statistics.median(samples[backend.name])


def _calls_per_round(backend: Backend, inputs: Arrays, budget_s: float) -> int:
    """Warm `backend` up on `inputs`, then how many calls fill `budget_s` (at least 1)."""
    for _ in range(WARMUP_CALLS):
        backend.run(inputs)
    start = time.perf_counter()
    backend.run(inputs)
    return max(1, int(budget_s / max(time.perf_counter() - start, 1e-6)))


def choose(backends: Sequence[Backend]) -> Backend | None:
    """The usable backend with the highest score, or None when none could be timed."""
    timed = [backend for backend in backends if backend.problem is None and backend.rows_per_s]
    return max(timed, key=lambda backend: backend.score, default=None)


def table(backends: Sequence[Backend], batch_sizes: Sequence[int], chosen: Backend | None) -> list[str]:
    """The measurements as text lines: rows/s per batch size and their geometric mean."""
    header = ("backend", *(f"batch {b}" for b in batch_sizes), "geo mean", "")
    rows = [header]
    for backend in sorted(backends, key=lambda b: -b.score):
        if backend.problem is not None:
            rows.append((backend.name, backend.problem))
            continue
        figures = [f"{backend.rows_per_s[b]:,.0f}" for b in batch_sizes]
        mark = "<- chosen" if backend is chosen else ""
        rows.append((backend.name, *figures, f"{backend.score:,.0f}", mark))
    widths = [max(len(row[i]) for row in rows if len(row) == len(header)) for i in range(len(header))]
    return ["rows/s (higher is better), median of rounds, same run:"] + [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in rows
    ]
