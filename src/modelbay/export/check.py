"""The numeric check: the original model and its export on the same inputs, output by output.

Inputs: the model's own examples where it has them, then random inputs of the input specs at
each batch size (standard normal for floats, so both signs are seen; 0 / 1 for integers and
booleans, valid for any embedding or mask). The rule is numpy.isclose's (numpy docs):
|export - original| <= atol + rtol * |original| for every element, NaN equal to NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelbay.types import TensorSpec, numpy_dtype

Arrays = list[np.ndarray]
Model = Callable[[Arrays], Arrays]
BATCH_SIZES = (1, 2, 7)  # 1 and 2: where a batch dim is most often specialised; 7: an odd size


@dataclass(frozen=True)
class Tolerance:
    """How far an export's outputs may be from the original's: atol absolute, rtol relative."""

    atol: float = 1e-4
    rtol: float = 1e-3

    def __str__(self) -> str:
        return f"atol={self.atol:g} + rtol={self.rtol:g} x |original|"


def random_inputs(specs: Sequence[TensorSpec], batch: int, rng: np.random.Generator) -> Arrays:
    """One array per spec, [batch, *spec.shape[1:]], of its datatype (see the module docstring)."""
    arrays = []
    for spec in specs:
        shape = (batch, *(spec.shape or (-1,))[1:])
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.random(shape) < 0.5)
        else:
            arrays.append(rng.integers(0, 2, shape).astype(dtype))
    return arrays


def check_cases(
    specs: Sequence[TensorSpec], batch_sizes: Sequence[int], examples: Arrays | None = None, seed: int = 0
) -> list[tuple[str, Arrays]]:
    """(label, inputs) pairs: the examples (if any), then random inputs per batch size (seeded)."""
    rng = np.random.default_rng(seed)
    cases = [(f"examples ({examples[0].shape[0]} rows)", examples)] if examples else []
    return cases + [(f"batch {batch}", random_inputs(specs, batch, rng)) for batch in batch_sizes]


@dataclass
class OutputError:
    """How far one output of the export is from the original's, over every case.

    max_abs: max |export - original|; max_rel: max |export - original| / |original| over the
    elements with |original| >= atol (smaller ones are judged by atol alone); beyond: elements
    outside the tolerance, of `elements`; worst: the case of max_abs.
    """

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    beyond: int = 0
    elements: int = 0

    def add(self, label: str, original: np.ndarray, export: np.ndarray, tolerance: Tolerance) -> None:
        """Count one case: `original` and `export` are this output's arrays for case `label`, of
        one shape and dtype (compare checks that first), compared in float64. A NaN on both sides
        is equal; a NaN on one side only is an infinite error. Never raises."""
        ref = original.astype(np.float64)
        got = export.astype(np.float64)
        both_nan = np.isnan(ref) & np.isnan(got)
        diff = np.where(both_nan, 0.0, np.abs(got - ref))
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
        close = np.isclose(got, ref, atol=tolerance.atol, rtol=tolerance.rtol, equal_nan=True)
        large = np.abs(ref) >= tolerance.atol
        rel = float((diff[large] / np.abs(ref[large])).max()) if large.any() else 0.0
        if diff.size and (not self.worst or float(diff.max()) > self.max_abs):
            self.max_abs, self.worst = float(diff.max()), label
        self.max_rel = max(self.max_rel, rel)
        self.beyond += int((~close).sum())
        self.elements += int(diff.size)


@dataclass
class CheckReport:
    """The result of `compare`: per output errors, and problems that stop a comparison at all
    (a different number of outputs, shapes or dtypes, the export failing on a case)."""

    tolerance: Tolerance
    cases: list[str]
    outputs: list[OutputError]
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when nothing stopped a comparison and every element is within the tolerance."""
        return not self.problems and all(output.beyond == 0 for output in self.outputs)

    def table(self) -> str:
        """The errors as a text table, one line per output."""
        rows = [("output", "max abs err", "max rel err", "worst at", "beyond tolerance")]
        for out in self.outputs:
            beyond = f"{out.beyond} of {out.elements}"
            worst = out.worst if out.max_abs else "-"
            rows.append((out.name, f"{out.max_abs:.3g}", f"{out.max_rel:.3g}", worst, beyond))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        )

    def failure(self) -> str:
        """One line saying why the check failed, naming the tolerance (empty when it passed)."""
        if self.problems:
            return "; ".join(self.problems)
        bad = [out for out in self.outputs if out.beyond]
        return "; ".join(
            f"output {out.name!r} differs from the original by up to {out.max_abs:.3g} (relative "
            f"{out.max_rel:.3g}, at {out.worst}): {out.beyond} of {out.elements} elements beyond the "
            f"tolerance {self.tolerance}"
            for out in bad
        )


def compare(
    original: Model,
    export: Model,
    names: Sequence[str],
    cases: Sequence[tuple[str, Arrays]],
    tolerance: Tolerance,
    what: str = "the export",
) -> CheckReport:
    """Run `original` and `export` on every case and measure their outputs' differences.

    names: the outputs' names, in order; what: how messages name `export`.
    Never raises for a difference: a failing `export`, a different output count, shape or dtype
    is recorded in `problems`. Exceptions of `original` propagate (the model itself is broken).
    """
    report = CheckReport(tolerance, [label for label, _ in cases], [OutputError(name) for name in names])
    for label, inputs in cases:
        want = original(inputs)
        try:
            got = export(inputs)
        except Exception as exc:
            report.problems.append(f"{what} fails at {label}: {summary(exc)}")
            continue
        if len(got) != len(want):
            report.problems.append(f"{what} returns {len(got)} outputs, the original {len(want)}")
            break
        for out, ref, value in zip(report.outputs, want, got, strict=True):
            if ref.shape != value.shape or ref.dtype != value.dtype:
                report.problems.append(
                    f"output {out.name!r} at {label}: {what} gives {value.dtype} {list(value.shape)}, "
                    f"the original {ref.dtype} {list(ref.shape)}"
                )
                continue
            out.add(label, ref, value, tolerance)
    return report


def summary(exc: BaseException, lines: int = 3) -> str:
    """The first non-empty lines of an exception's text (torch's run to pages), with its type."""
    text = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(text[:lines])[:600]}"
