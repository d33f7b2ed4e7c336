"""Shadow calls: a share of a model's unversioned calls also sent to another version, whose
answers are recorded and compared with the served ones, never returned (traffic.shadow).

A shadow call starts once the caller's answer is ready, as an asyncio task of its own that the
caller never awaits: the caller's answer neither waits for it nor can fail because of it, and
its own forward pass never shares the model with its shadow. Its batches run on the shadow
version's background thread, at the lowest CPU priority (runtime/batcher.py's BACKGROUND), so
the forward passes of the callers' versions come first on the cores. The shadow version's queue is
shared with the callers that name that version, so a shadow call is skipped (counted, never
queued to wait) when that queue is at least half full, and is cancelled at the shadow version's
`timeout_s` (counted as DeadlineExceeded). Each call's outcome, time and agreement go to the
shadow version's metrics (modelbay_shadow_*).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from modelbay.errors import Overloaded
from modelbay.registry.registry import ServedModel
from modelbay.runtime.batcher import BACKGROUND
from modelbay.runtime.context import CURRENT

Compute = Callable[[ServedModel], Awaitable[tuple[Any, Any]]]
NUMERIC_KINDS = "biufc"  # numpy dtype kinds compared within a tolerance; others must be equal


class Shadows:
    """The shadow calls of one dataplane in flight (held here: the event loop keeps only weak
    references to tasks)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Shadow calls started and not finished."""
        return len(self._tasks)

    def send(self, shadow: ServedModel, compute: Compute, served: Any, tolerance: float) -> None:
        """Start a shadow call of `compute` on `shadow` and return at once.

        served: the answer the caller got (the one `compute` gives: OIP outputs by name, or a list
                of predictions), compared with the shadow's; None: not compared (it was a
                default output).
        tolerance: numpy.allclose's atol and rtol for tensors (ShadowConfig.tolerance).
        """
        batcher = shadow.batcher
        if not shadow.ready or 2 * batcher.queue_depth >= batcher.config.max_queue_size:
            if shadow.metrics is not None:
                shadow.metrics.on_shadow("skipped")
            return
        task = asyncio.get_running_loop().create_task(_shadow_call(shadow, compute, served, tolerance))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel the shadow calls in flight (the server is stopping)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _shadow_call(model: ServedModel, compute: Compute, served: Any, tolerance: float) -> None:
    """Run one shadow call and record it; nothing it raises leaves it (but cancellation)."""
    BACKGROUND.set(True)  # in this task's own context: its batches run at the lowest CPU priority
    CURRENT.set(None)  # not the served request: its batch size and spans are not the shadow's
    started = time.perf_counter()
    try:
        async with asyncio.timeout(model.timeout_s):
            answer, defaults = await compute(model)
    except TimeoutError:
        status = "DeadlineExceeded"
    except Overloaded:  # the queue filled up since `send` looked: skipped, as there
        status = "skipped"
    except Exception as exc:
        status = type(exc).__name__
    else:
        agreed = None if served is None or defaults else agrees(served, answer, tolerance)
        if model.metrics is not None:
            model.metrics.on_shadow("success", time.perf_counter() - started, agreed)
        return
    if model.metrics is not None:
        model.metrics.on_shadow(status)


def agrees(served: Any, shadow: Any, tolerance: float) -> bool:
    """Whether two answers agree: OIP outputs ({name: array}) or the simple door's predictions
    (lists, dicts, arrays, numbers, strings), compared element by element: the same structure,
    dict keys and shapes, every number within `tolerance` (absolute or relative: numpy.allclose,
    NaN equal to NaN; the same model gives floats a last bit apart in batches of other sizes),
    everything else equal."""
    if isinstance(served, dict) or isinstance(shadow, dict):
        return (
            isinstance(served, dict)
            and isinstance(shadow, dict)
            and served.keys() == shadow.keys()
            and all(agrees(served[key], shadow[key], tolerance) for key in served)
        )
    if isinstance(served, list | tuple) and isinstance(shadow, list | tuple):
        return len(served) == len(shadow) and all(
            agrees(a, b, tolerance) for a, b in zip(served, shadow, strict=True)
        )
    if isinstance(served, str | bytes) or isinstance(shadow, str | bytes):
        return type(served) is type(shadow) and served == shadow
    try:
        return _arrays_agree(served, shadow, tolerance)  # arrays, numbers, lists against arrays
    except (TypeError, ValueError):  # objects numpy cannot compare: equal or not
        try:
            return bool(served == shadow)
        except Exception:
            return False


def _arrays_agree(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in NUMERIC_KINDS and b.dtype.kind in NUMERIC_KINDS:
        return bool(np.allclose(a, b, rtol=tolerance, atol=tolerance, equal_nan=True))
    return bool(np.array_equal(a, b))
