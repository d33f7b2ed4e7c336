"""Merging request tensors into one forward pass and cutting the outputs back apart."""

from __future__ import annotations

import numpy as np
import pytest

from modelbay.errors import InferenceFailed
from modelbay.runtime.collate import run_batched, split_batch


def test_items_are_concatenated_and_each_gets_its_own_rows() -> None:
    calls: list[tuple[int, ...]] = []

    def double(arrays: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(arrays[0].shape)
        return [arrays[0] * 2]

    batch = [[np.full((n, 3), n, np.float32)] for n in (1, 4, 2)]
    results = run_batched(double, batch)
    assert calls == [(7, 3)]
    for n, (out,) in zip((1, 4, 2), results, strict=True):
        np.testing.assert_array_equal(out, np.full((n, 3), 2 * n, np.float32))


def test_items_of_different_shapes_run_in_separate_groups() -> None:
    calls: list[tuple[int, ...]] = []

    def total(arrays: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(arrays[0].shape)
        return [arrays[0].sum(axis=1)]

    batch = [[np.ones((1, 2))], [np.ones((1, 5))], [np.ones((2, 2))]]
    results = run_batched(total, batch)
    assert calls == [(3, 2), (1, 5)]
    assert [r[0].tolist() for r in results] == [[2.0], [5.0], [2.0, 2.0]]


def test_output_without_one_row_per_input_row_is_a_model_failure() -> None:
    with pytest.raises(InferenceFailed, match=r"output of shape \[1, 3\] for a batch of 4 rows"):
        split_batch([np.zeros((1, 3))], [2, 2])
