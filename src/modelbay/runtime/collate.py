"""Merge the tensors of several requests into one forward pass, and cut the result back apart."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from modelbay.errors import InferenceFailed

Arrays = list[np.ndarray]


def run_batched(run: Callable[[Arrays], Arrays], batch: list[Arrays]) -> list[Arrays]:
    """Run `run` once per group of compatible items and return each item its own rows.

    batch: one entry per request, each the request's input arrays in input order, every array
           shaped [rows_i, ...] with the same rows_i within an entry.
    run:   the model: input arrays [sum(rows), ...] -> output arrays [sum(rows), ...].
    Items whose trailing shapes and dtypes agree are concatenated along dim 0 (one forward pass);
    items that differ (e.g. other image sizes) form their own groups, in order of first arrival.
    Returns, per item, output arrays [rows_i, ...] that are views into the group's outputs.
    Raises InferenceFailed if an output's first dimension is not the group's total rows.
    """
    groups: dict[tuple[object, ...], list[int]] = {}
    for index, arrays in enumerate(batch):
        key = tuple((a.shape[1:], a.dtype.str) for a in arrays)
        groups.setdefault(key, []).append(index)
    results: list[Arrays] = [[] for _ in batch]
    for members in groups.values():
        if len(members) == 1:
            merged = batch[members[0]]
        else:
            merged = [np.concatenate(column) for column in zip(*(batch[i] for i in members), strict=True)]
        sizes = [batch[i][0].shape[0] if batch[i] else 1 for i in members]
        for index, outputs in zip(members, split_batch(run(merged), sizes), strict=True):
            results[index] = outputs
    return results


def split_batch(outputs: Arrays, sizes: list[int]) -> list[Arrays]:
    """Cut batched model outputs back into per-request arrays.

    outputs: arrays [sum(sizes), ...] from one forward pass.
    sizes:   rows each request contributed, in queue order.
    Returns one list of arrays per request, shapes [sizes[i], ...], sharing memory with `outputs`.
    Raises InferenceFailed if an output's first dimension != sum(sizes) (the model broke the
    batch contract: one output row per input row).
    """
    total = sum(sizes)
    for array in outputs:
        if array.ndim == 0 or array.shape[0] != total:
            raise InferenceFailed(
                f"model returned an output of shape {list(array.shape)} for a batch of {total} rows; "
                "every output must have one row per input row"
            )
    if len(sizes) == 1:
        return [outputs]
    bounds = np.cumsum(sizes)[:-1]
    per_output = [np.split(array, bounds) for array in outputs]
    return [list(parts) for parts in zip(*per_output, strict=True)]
