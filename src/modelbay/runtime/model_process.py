"""Model worker processes, the server's side: a model runs in a process of its own.

A crash (segfault, `os._exit`, the OOM killer) or a hang then ends only that process, and a model
may run under another Python environment's interpreter. `ModelProcess` starts and supervises the
worker (`python -m modelbay.runtime.model_worker`, which loads the model itself) and makes one
round trip at a time with it (`modelbay.runtime.model_messages`); the predictors over it are in
`modelbay.runtime.process_predictors`.

What a dying worker costs (issue 10, item 6): the batch in flight fails with WorkerProcessDied
(500, naming the model) and the batcher fails it whole, unsplit (its halves would only crash the
restarted worker again); until the worker is back the model's requests get ModelNotReady (503),
and other models never notice. The worker is restarted after an exponential backoff (0.5 s,
doubling to 30 s; back to 0.5 s once a worker has lived 60 s). A forward pass longer than the
model's `timeout_s` is ended by killing the worker: the request has had its 504 from the
dataplane's deadline by then, and the model's thread is free again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from modelbay.errors import ModelLoadError, ModelNotReady, WorkerProcessDied
from modelbay.runtime.model_messages import (
    Channel,
    Failure,
    FramingError,
    Ready,
    Start,
)
from modelbay.settings import ModelConfig

log = logging.getLogger("modelbay.model_process")
_Reply = TypeVar("_Reply")
# A forward pass is killed this long after `timeout_s`: the dataplane's sweep (every 50 ms) has
# answered its requests 504 by then, so none of them sees the kill as a 500.
KILL_AFTER_TIMEOUT_S = 0.5
STOP_WAIT_S = 2.0  # a closed worker's time to exit by itself before it is killed


@dataclass
class Backoff:
    """Seconds to wait before restarting a worker that died: `initial_s`, doubled after each death
    up to `max_s`, and back to `initial_s` once a worker has lived `healthy_s` (uvicorn and
    TorchServe restart dead workers the same way)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    healthy_s: float = 60.0
    _next_s: float = 0.0

    def after(self, lived_s: float) -> float:
        """Seconds to wait before the next start, after a worker that lived `lived_s` (0: never started)."""
        if lived_s >= self.healthy_s or not self._next_s:
            self._next_s = self.initial_s
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.max_s)
        return delay


class _Child:
    """One worker process and the server's end of its socket."""

    def __init__(self, process: subprocess.Popen[bytes], channel: Channel) -> None:
        self.process = process
        self.channel = channel
        self.ready_at = 0.0
        self.reason: str | None = None  # why the server ended it, when it did

    def end(self, reason: str | None, wait_s: float = 0.0) -> None:
        """Close its socket; give it `wait_s` seconds to exit, then SIGKILL it; reap it.

        reason: why the server ends it (None: it is dying on its own, its exit status says how).
        """
        if self.reason is None:
            self.reason = reason
        self.channel.close()
        try:
            self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def describe(self) -> str:
        """How it ended, e.g. "was killed by SIGSEGV" (call once it has exited)."""
        if self.reason is not None:
            return self.reason
        code = self.process.returncode
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"


@dataclass
class _Slot:
    """The worker of a model as the calls, the supervisor thread and the finalizer share it."""

    child: _Child | None = None  # starting or serving
    serving: bool = False
    down: str = "is starting"  # why none serves, for ModelNotReady


class ModelProcess:
    """The worker process of one model, started, restarted and stopped here.

    config:   the model's complete ModelConfig (named, as load_model makes it); the worker gets
              it with worker_process false and loads the model from it.
    role:     "runner" (artifact model: Run -> Ran) or "handler" (predict.py: Handle -> Handled).
    python:   the interpreter to run the worker with (another environment's, with modelbay in it).
    backoff:  the waits between restarts (Backoff()).
    start_timeout_s: longest a worker may take to load and set up its model.
    `start()` blocks until the first worker is ready; `call()` is one round trip; `close()` ends
    the worker for good (so does dropping the object, or the server process ending).
    A supervisor thread per model starts every worker, so PR_SET_PDEATHSIG, which follows the
    thread that started a process, fires only when the server ends; it holds the model weakly.
    """

    def __init__(
        self,
        config: ModelConfig,
        role: Literal["runner", "handler"],
        *,
        python: str = sys.executable,
        backoff: Backoff | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.name = config.name or "model"
        self.python = python
        self.backoff = backoff or Backoff()
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = None if config.timeout_s is None else config.timeout_s + KILL_AFTER_TIMEOUT_S
        self._start = Start(msgspec.json.encode(msgspec.structs.replace(config, worker_process=False)), role)
        self._closed = threading.Event()
        self._state = threading.Lock()  # guards _slot
        self._calls = threading.Lock()  # one round trip at a time
        self._slot = _Slot()
        self._first: concurrent.futures.Future[Ready] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self.ready: Ready | None = None
        self.restarts = 0
        weakref.finalize(self, _abandon, self._closed, self._slot)

    @property
    def pid(self) -> int | None:
        """The serving worker's process id; None while none serves."""
        slot = self._slot
        child = slot.child
        return child.process.pid if child is not None and slot.serving else None

    def start(self) -> Ready:
        """Start the worker and wait until it has loaded its model. Blocking.

        Returns its Ready (metadata). Raises ModelLoadError with the worker's reason when it
        cannot load the model, exits, or takes longer than `start_timeout_s`.
        """
        self._thread = threading.Thread(
            target=_supervise,
            args=(weakref.ref(self), self._closed),
            name=f"modelbay-{self.name}-process",
            daemon=True,
        )
        self._thread.start()
        try:
            self.ready = self._first.result()
        except BaseException:
            self.close()
            raise
        return self.ready

    def call(self, message: object, reply: type[_Reply]) -> _Reply:
        """Send `message`, wait for its `reply`; blocking, one round trip at a time.

        Raises ModelNotReady while no worker serves (starting, restarting after a death, closed);
        WorkerProcessDied when the worker dies, breaks the framing, or is still busy past the
        model's `timeout_s` (it is killed; a new one is started); the model code's error
        (Failure.exception) when it raised in the worker.
        """
        with self._calls:
            child = self.check_serving()
            deadline = None if self.call_timeout_s is None else time.monotonic() + self.call_timeout_s
            try:
                child.channel.send(message, deadline)
                answer = child.channel.receive(deadline)
                if not isinstance(answer, reply | Failure):
                    raise FramingError(f"expected {reply.__name__}, got {type(answer).__name__}")
            except (OSError, EOFError, FramingError) as exc:  # TimeoutError is an OSError
                raise self._lost(child, exc) from exc
        if isinstance(answer, Failure):
            raise answer.exception()
        return answer

    @property
    def serving(self) -> bool:
        """True while a worker is up and serving (calls are not refused with ModelNotReady)."""
        return self._slot.serving

    def check_serving(self) -> _Child:
        """The worker serving now. Raises ModelNotReady, saying why, while none does."""
        with self._state:
            child = self._slot.child if self._slot.serving else None
            down = self._slot.down
        if child is None:
            raise ModelNotReady(f"model {self.name!r} is not ready: its worker process {down}")
        return child

    def close(self) -> None:
        """End the worker for good: its socket is closed (an idle worker exits by itself; one
        still in a batch, or not gone STOP_WAIT_S later, is killed); no restart follows. A call
        in flight gets ModelNotReady."""
        self._closed.set()
        with self._state:
            child, self._slot.child, self._slot.serving = self._slot.child, None, False
            self._slot.down = "is stopped"
        if child is not None:
            child.end("was stopped", 0.0 if self._calls.locked() else STOP_WAIT_S)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT_S)

    def _lost(self, child: _Child, exc: BaseException) -> ModelNotReady | WorkerProcessDied:
        """A round trip broke off: end the worker (its stream cannot be trusted) and say why."""
        busy = (
            f"was still busy {self.call_timeout_s:g} s into a batch (timeout_s + {KILL_AFTER_TIMEOUT_S:g} s)"
        )
        _end_broken(child, exc, busy)
        if self._closed.is_set():
            return ModelNotReady(f"model {self.name!r} is stopping")
        self._forget(child)
        return WorkerProcessDied(
            f"model {self.name!r}: its worker process (pid {child.process.pid}) {child.describe()} "
            "during a batch; it is being restarted"
        )

    def _forget(self, child: _Child) -> None:
        """`child` has ended: calls are refused (ModelNotReady) until the next worker serves."""
        with self._state:
            if self._slot.child is child:
                self._slot.serving = False
                self._slot.down = f"{child.describe()}; it is being restarted"

    def _next(self) -> tuple[_Child | None, float]:
        """Start a worker (the supervisor thread's step): it, or None and the wait before the next try."""
        try:
            return self._spawn(), 0.0
        except Exception as exc:
            if not self._first.done():  # the first start: the load fails, nothing is retried
                self._closed.set()
                self._first.set_exception(exc)
                return None, 0.0
            if self._closed.is_set():  # closed while it started: nothing to report
                return None, 0.0
            delay = self.backoff.after(0.0)
            log.error(
                "model %r: worker process failed to start: %s; next try in %.1f s", self.name, exc, delay
            )
            return None, delay

    def _died(self, child: _Child) -> float:
        """`child` exited (the supervisor saw it): log it; returns the wait before the restart."""
        child.end(None)
        self._forget(child)
        self.restarts += 1
        delay = self.backoff.after(time.monotonic() - child.ready_at)
        log.error(
            "model %r: worker process (pid %d) %s; restarting in %.1f s",
            self.name, child.process.pid, child.describe(), delay,
        )  # fmt: skip
        return delay

    def _spawn(self) -> _Child:
        """A new worker with its model loaded, now serving. Raises ModelLoadError when it cannot load."""
        server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [self.python, "-m", "modelbay.runtime.model_worker"]
        command += ["--fd", str(worker_end.fileno()), "--parent", str(os.getpid())]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=(worker_end.fileno(),))
        except OSError as exc:
            server_end.close()
            raise ModelLoadError(f"model {self.name!r}: cannot start {self.python}: {exc}") from exc
        finally:
            worker_end.close()
        child = _Child(process, Channel(server_end))
        with self._state:
            self._slot.child = child
        ready = self._handshake(child)
        with self._state:
            if self._closed.is_set():
                child.end("was stopped")
                raise ModelLoadError(f"model {self.name!r} was stopped while its worker process started")
            self._slot.serving = True
        child.ready_at = time.monotonic()
        if not self._first.done():
            self._first.set_result(ready)
        elif self.ready is not None and _specs(ready) != _specs(self.ready):
            log.warning("model %r: its restarted worker reports other inputs or outputs", self.name)
        return child

    def _handshake(self, child: _Child) -> Ready:
        """Send Start, wait for Ready. Raises ModelLoadError (the worker is then ended)."""
        deadline = time.monotonic() + self.start_timeout_s
        try:
            child.channel.send(self._start, deadline)
            answer = child.channel.receive(deadline)
        except (OSError, EOFError, FramingError) as exc:
            _end_broken(child, exc, f"took over {self.start_timeout_s:g} s (start_timeout_s) to load")
            raise ModelLoadError(
                f"model {self.name!r}: its worker process {child.describe()} while loading the model"
            ) from exc
        if isinstance(answer, Ready):
            return answer
        child.end("failed to load its model", STOP_WAIT_S)
        if isinstance(answer, Failure):
            said = answer.message if answer.error == "ModelLoadError" else f"{answer.error}: {answer.message}"
            raise ModelLoadError(f"model {self.name!r} (in its worker process): {said}")
        raise ModelLoadError(f"model {self.name!r}: its worker process answered {type(answer).__name__}")


def _specs(ready: Ready) -> tuple[object, ...]:
    return ready.platform, ready.inputs, ready.outputs


def _end_broken(child: _Child, exc: BaseException, busy: str) -> None:
    """End `child` after a round trip with it broke off with `exc`: killed at once when it was
    still `busy` (a timeout) or broke the framing; given STOP_WAIT_S to finish dying when it closed
    the socket (then its exit status says how it ended)."""
    if isinstance(exc, TimeoutError):
        child.end(f"{busy} and was killed")
    elif isinstance(exc, FramingError):
        child.end(f"broke the message framing ({exc}) and was killed")
    else:
        child.end(None, STOP_WAIT_S)


def _supervise(ref: weakref.ref[ModelProcess], closed: threading.Event) -> None:
    """The supervisor thread of one model: start a worker, wait for its end, wait the backoff,
    start the next; until the model is closed or dropped. Holds the model only between steps."""
    while not closed.is_set():
        model = ref()
        if model is None:
            return
        child, delay = model._next()
        del model
        if child is not None:
            child.process.wait()
            model = ref()
            if model is None or closed.is_set():
                return
            delay = model._died(child)
            del model
        closed.wait(delay)


def _abandon(closed: threading.Event, slot: _Slot) -> None:
    """A ModelProcess dropped without close() (a model whose load failed later): end its worker."""
    closed.set()
    if slot.child is not None and slot.child.process.poll() is None:
        slot.child.process.kill()
