"""The model worker process: `python -m modelbay.runtime.model_worker --fd N --parent PID`.

Started by `modelbay.runtime.model_process` (the server's side), with whatever interpreter the
model's environment has. It reads Start from the socket on fd N, loads the model itself
(`modelbay.loading.load_model`, then `Predictor.setup`), answers Ready (or a Failure, and exits
1), then answers Run or Handle messages one at a time (`modelbay.runtime.model_messages`) until
the server closes the socket (exit 0).

It never outlives its server: on Linux it asks for SIGKILL when the server thread that started it
ends (PR_SET_PDEATHSIG, prctl(2): that thread lives as long as the model does, so the signal comes
only with the server's end), and it exits when the socket closes. It ignores SIGINT and SIGTERM:
Ctrl-C in a terminal, or a service manager stopping the whole process group or cgroup, would
otherwise end it while its server still drains its requests; the server closes it after them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

import msgspec

from modelbay.errors import InferenceFailed, ModelLoadError
from modelbay.loading import load_model
from modelbay.predictor import Predictor
from modelbay.runtime.model_messages import (
    Channel,
    Failure,
    FramingError,
    Handle,
    Handled,
    Ran,
    Ready,
    Run,
    Start,
    frame,
)
from modelbay.runtime.process import own_process
from modelbay.settings import ModelConfig

log = logging.getLogger("modelbay.model_worker")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RunnerWorker:
    """An artifact model: answers Run with its runner's forward pass (decoding stays in the server)."""

    def __init__(self, predictor: Predictor) -> None:
        runner = getattr(predictor, "runner", None)
        if runner is None:
            raise ModelLoadError(f"{type(predictor).__name__} has no runner: not an artifact model")
        self.runner = runner
        self.ready = Ready(
            runner.platform,
            list(predictor.inputs),
            list(predictor.outputs),
            output_keys=getattr(runner, "output_keys", None),
        )

    def answer(self, message: object) -> Ran | Failure:
        """Run -> Ran (or the Failure of the forward pass). Raises FramingError for anything else."""
        if not isinstance(message, Run):
            raise FramingError(f"a runner worker got {type(message).__name__}, not Run")
        try:
            arrays = self.runner(message.arrays)
        except BaseException as exc:  # model code, SystemExit included: this pass's failure
            return Failure.of(exc)
        return Ran(arrays, getattr(self.runner, "output_keys", None))


class HandlerWorker:
    """A predict.py folder: answers Handle with each item's finished output, hooks included.

    default_output: the model's `batching.default_output`; its finished answer for each door is
    computed here once (Ready.default), so a model whose default does not fit fails to load.
    """

    def __init__(self, predictor: Predictor, default_output: Any) -> None:
        self.predictor = predictor
        default = None
        if default_output is not None:
            output = predictor.default_output(default_output, 1)
            default = (predictor.postprocess(output), predictor.encode_tensors(output))
        self.ready = Ready(
            predictor.platform,
            list(predictor.inputs),
            list(predictor.outputs),
            preprocess_in_thread=predictor.preprocess_in_thread,
            custom_rows=type(predictor).rows is not Predictor.rows,
            default=default,
        )

    def answer(self, message: object) -> Handled | Failure:
        """Handle -> Handled: each item decoded (OIP door) or preprocessed (simple door), the live
        ones predicted as one batch, each output encoded or postprocessed. An item whose own hook
        fails gets its Failure; a failing `predict` fails the whole batch (the server then splits
        it, as for a model in the server). Raises FramingError for anything but Handle."""
        if not isinstance(message, Handle):
            raise FramingError(f"a handler worker got {type(message).__name__}, not Handle")
        predictor = self.predictor
        outputs: list[Any] = [None] * len(message.items)
        live: list[tuple[int, bool, Any]] = []
        for index, item in enumerate(message.items):
            oip = item.door == "oip"
            try:
                value = predictor.decode_tensors(item.value) if oip else predictor.preprocess(item.value)
            except BaseException as exc:
                outputs[index] = Failure.of(exc)
            else:
                live.append((index, oip, value))
        if live:
            try:
                results = _checked(predictor.predict([value for _, _, value in live]), len(live))
            except BaseException as exc:
                return Failure.of(exc)
            for (index, oip, _), result in zip(live, results, strict=True):
                try:
                    outputs[index] = (
                        predictor.encode_tensors(result) if oip else predictor.postprocess(result)
                    )
                except BaseException as exc:
                    outputs[index] = Failure.of(exc)
        return Handled(outputs)


def _checked(outputs: Any, count: int) -> list[Any]:
    if not isinstance(outputs, list | tuple) or len(outputs) != count:
        got = len(outputs) if isinstance(outputs, list | tuple) else type(outputs).__name__
        raise InferenceFailed(
            f"predict returned {got} outputs for a batch of {count}; it must return one per input"
        )
    return list(outputs)


def load(start: Start) -> RunnerWorker | HandlerWorker:
    """Load and set up the model that `start` describes. Raises whatever loading raises."""
    config = msgspec.json.decode(start.config, type=ModelConfig)
    loaded = load_model(msgspec.structs.replace(config, worker_process=False), in_worker=True)
    loaded.predictor.setup(loaded.model_dir)
    if start.role == "runner":
        return RunnerWorker(loaded.predictor)
    return HandlerWorker(loaded.predictor, config.batching.default_output)


def serve(channel: Channel, worker: RunnerWorker | HandlerWorker) -> None:
    """Answer requests until the server closes the socket. A reply that cannot be pickled (model
    code returned something that cannot travel) is answered with its Failure instead. A traced
    batch (its message has a traceparent) is timed as a `forward` span (WorkerTraces)."""
    traces = WorkerTraces()
    while True:
        try:
            message = channel.receive()
        except EOFError:
            traces.shutdown()
            return
        traceparent = getattr(message, "traceparent", None)
        if traceparent is None:
            reply = worker.answer(message)
        else:
            with traces.forward(traceparent):
                reply = worker.answer(message)
        try:
            parts = frame(reply)
        except Exception as exc:
            parts = frame(Failure.of(exc))
        channel.write(parts)


class WorkerTraces:
    """The worker's OpenTelemetry spans (runtime/tracing.py), set up on the first traced batch from
    the OTEL_* variables the server passed down; a worker without the SDK logs it once and goes on."""

    def __init__(self) -> None:
        self._tracing: Any = None
        self._failed = False

    def forward(self, traceparent: str) -> contextlib.AbstractContextManager[Any]:
        if self._tracing is None and not self._failed:
            try:
                from modelbay.runtime.tracing import Tracing

                self._tracing = Tracing.from_environment(role="model_worker")
            except Exception as exc:  # no SDK in this environment, or a bad OTEL_* value
                self._failed = True
                log.warning("no traces from this model worker: %s", exc)
        if self._tracing is None:
            return contextlib.nullcontext()
        return cast("contextlib.AbstractContextManager[Any]", self._tracing.forward(traceparent))

    def shutdown(self) -> None:
        if self._tracing is not None:
            self._tracing.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: load the model the server sends, then serve it. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m modelbay.runtime.model_worker")
    parser.add_argument("--fd", type=int, required=True, help="this end of the socket pair")
    parser.add_argument("--parent", type=int, required=True, help="the server's process id")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        start = channel.receive()
    except EOFError:
        return 0
    if not isinstance(start, Start):
        raise FramingError(f"expected Start, got {type(start).__name__}")
    try:
        worker = load(start)
    except BaseException as exc:
        channel.send(Failure.of(exc))
        return 1
    _settle()
    channel.send(worker.ready)
    serve(channel, worker)
    return 0


def _die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the server thread that started this process ends (Linux), and exit
    at once if the server is already gone (reparented before the request took effect)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("prctl(PR_SET_PDEATHSIG) is unavailable; the worker ends when its socket closes")
    if os.getppid() != parent:
        os._exit(0)


def _settle() -> None:
    """Serve as `modelbay serve` does (Server.tune_process, own_process): what was loaded is frozen
    out of the GC's work, the allocator keeps freed memory, torch uses at most this process's cores."""
    gc.collect()
    gc.freeze()
    own_process()
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
        if torch.get_num_threads() > cores:
            torch.set_num_threads(cores)


if __name__ == "__main__":
    sys.exit(main())
