"""A model's own threads: a fixed pool of daemon threads that model code cannot use to end the server.

Each served model runs its forward passes on one such pool (one thread) and its per-request hooks
(preprocess, postprocess, tensor decoding) on another (`preprocess_threads`), so a model whose code
hangs blocks only its own threads, never another model's (issue 9, item 4). The threads are daemon
threads: a hung `predict` cannot keep the process from exiting once the drain deadline has passed
(`concurrent.futures.ThreadPoolExecutor` joins its threads at exit, for ever if one never returns).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("modelbay.threads")


class ModelCodeExit(RuntimeError):
    """Model code raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
    GeneratorExit): delivered as this instead, so it fails one request and cannot stop the server."""


_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonThreadPool(concurrent.futures.Executor):
    """`max_workers` daemon threads named `name`-N, started at once, serving one FIFO of jobs.

    Usable wherever an Executor is (`loop.run_in_executor`). A job that raises a BaseException
    that is not an Exception fails its future with ModelCodeExit (the original as its cause).
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
            for index in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue `fn(*args)` (keyword arguments are not supported). Raises RuntimeError after shutdown."""
        if self._closed:
            raise RuntimeError(f"thread pool {self.name!r} is shut down")
        if kwargs:
            raise TypeError("DaemonThreadPool.submit takes positional arguments only")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout_s: float = 1.0) -> None:
        """Stop taking jobs; threads exit once the jobs queued before this are done.

        wait: join the threads, for at most `timeout_s` seconds in all; a thread still busy then
        (model code that hangs) is left running and logged: as a daemon thread it does not hold
        the process at exit. cancel_futures: cancel the jobs not started yet.
        """
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [thread.name for thread in self._threads if thread.is_alive()]
        if busy:
            log.warning("threads %s are still running model code after %.1f s; leaving them", busy, timeout_s)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:  # SystemExit & co. from model code: that job's failure only
                error = ModelCodeExit(f"model code raised {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                future.set_exception(error)
            else:
                future.set_result(result)
            del job, future, fn, args  # drop references to big tensors before waiting again
