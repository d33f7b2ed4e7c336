"""Settings for a process modelbay owns: the GC's youngest generation and glibc malloc's thresholds."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
import sys

import numpy as np
import pytest

from modelbay.runtime.process import GEN0_THRESHOLD, own_process, tune_malloc

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


class MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (mallinfo(3)); `hblkhd`: bytes held in mmap'd blocks."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@pytest.mark.skipif(not glibc, reason="mallopt(3) is glibc's")
def test_after_tuning_a_batch_sized_buffer_comes_from_the_heap_not_a_fresh_mmap() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    assert tune_malloc() is True
    mapped = libc.mallinfo2().hblkhd
    block = np.empty(24 << 20, dtype=np.uint8)  # a 24 MiB activation: mmap'd by default
    assert libc.mallinfo2().hblkhd - mapped < 1 << 20
    del block


def test_own_process_collects_the_youngest_generation_less_often() -> None:
    before = gc.get_threshold()
    try:
        own_process()
        assert gc.get_threshold() == (GEN0_THRESHOLD, *before[1:])
    finally:
        gc.set_threshold(*before)
