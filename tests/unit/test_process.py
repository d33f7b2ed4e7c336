"""Settings for a process modelbay owns: the GC's youngest generation and glibc malloc's thresholds."""

from __future__ import annotations

import gc
import platform
import sys

import numpy as np
import pytest

from modelbay.runtime.process import GEN0_THRESHOLD, own_process, tune_malloc

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc, reason="mallopt(3) is glibc's")
def test_glibc_takes_the_malloc_thresholds_and_memory_still_works() -> None:
    assert tune_malloc() is True
    # Large buffers, freed and taken again, are what the thresholds are for; the data stays right.
    for size in (1 << 20, 8 << 20, 40 << 20):
        block = np.arange(size // 8, dtype=np.int64)
        assert int(block[-1]) == size // 8 - 1
        del block


def test_own_process_collects_the_youngest_generation_less_often() -> None:
    before = gc.get_threshold()
    try:
        own_process()
        assert gc.get_threshold() == (GEN0_THRESHOLD, *before[1:])
    finally:
        gc.set_threshold(*before)
