"""Settings for a process that modelbay owns outright (`modelbay serve`, each `--workers` process).

A library embedding modelbay (`Server.start()` in someone else's program) does not get these: they
change process-wide behaviour that the host program may rely on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger("modelbay.process")

# mallopt(3) parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit (mallopt(3)).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
GEN0_THRESHOLD = 10_000


def own_process() -> None:
    """Tune the garbage collector and the C allocator for serving; call once, after loading.

    - The youngest GC generation is collected every 10,000 allocations, not 700: each request
      allocates a few short-lived objects (profile in benchmarks/README.md).
    - glibc malloc keeps freed memory instead of handing it back to the kernel at once. A batch's
      tensors (MiB each) are otherwise mmap'd and munmap'd, or trimmed from the model thread's
      arena, on every forward pass, and the kernel zero-fills fresh pages each time: 22% of the
      serving core went to page faults for the conv net of benchmarks/run.py, 4% after this
      (`perf record -C 0`, benchmarks/README.md). The cost is memory: up to the largest batch's
      working set stays mapped, which the next batch reuses anyway. Allocations of 32 MiB and
      more are still mmap'd. Other C libraries (musl, macOS) are left as they are.
    """
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
    tune_malloc()


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (mallopt(3)); False where glibc is not the allocator."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return done
