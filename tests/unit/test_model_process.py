"""Model worker processes: real models loaded in real worker processes, crashed, hung and killed.

Each worker loads torch and its model (a few seconds on this machine), so the tests share workers
where they can: one handler model (`words`) goes through its round trips, then a crash, a segfault
and a hang, each followed by its restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelbay.errors import InferenceFailed, InvalidInput, ModelLoadError, ModelNotReady, WorkerProcessDied
from modelbay.loading import LoadedModel, load_model
from modelbay.runtime.batcher import Batcher
from modelbay.runtime.model_messages import (
    MAGIC,
    Channel,
    Failure,
    FramingError,
    Run,
    frame,
)
from modelbay.runtime.model_process import Backoff, ModelProcess
from modelbay.runtime.process_predictors import ProcessPredictor, ProcessRunner
from modelbay.server import Server
from modelbay.settings import BatchingConfig, ModelConfig, Settings
from tests.conftest import asgi_client

WORDS_HANDLER = '''
import ctypes
import os
import time

import numpy as np

import modelbay


class Words(modelbay.Predictor):
    """Upper-cases words and doubles tensors; three words misbehave: "exit" ends the process,
    "segfault" reads address 0, "hang" sleeps far past the model's timeout_s."""

    def preprocess(self, example):
        if isinstance(example, str) and example == "bad":
            raise modelbay.InvalidInput("'bad' is not a word this model takes")
        return example

    def predict(self, batch):
        for item in batch:
            if isinstance(item, str) and item == "exit":
                os._exit(3)
            if isinstance(item, str) and item == "segfault":
                ctypes.string_at(0)
            if isinstance(item, str) and item == "hang":
                time.sleep(600)
        return [item.upper() if isinstance(item, str) else np.asarray(item) * 2 for item in batch]
'''
# A stand-in interpreter: records that it ran, then runs the worker with the real one.
WRAPPER = """#!/bin/sh
echo "$@" > "{marker}"
exec "{python}" "$@"
"""
# A stand-in interpreter whose "worker" answers the Start message with bytes that are no frame.
GARBAGE_WORKER = """#!{python}
import os, sys
fd = int(sys.argv[sys.argv.index("--fd") + 1])
os.write(fd, b"HTTP/1.1 200 OK" + bytes(9))
os.read(fd, 1 << 20)
"""


def wait_serving(process: ModelProcess, timeout_s: float = 60.0) -> None:
    """Wait until `process` has a worker serving again (after a restart)."""
    deadline = time.monotonic() + timeout_s
    while not process.serving:
        assert time.monotonic() < deadline, "the worker process was not restarted"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (PID 1 in a container may never reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    """The words handler in its worker process (timeout_s 1 s, a default output), restarts 0.1 s
    after a death."""
    folder = tmp_path_factory.mktemp("models") / "words"
    folder.mkdir()
    (folder / "predict.py").write_text(WORDS_HANDLER)
    batching = {"slo_ms": 1000, "default_output": "fallback"}
    loaded = load_model({"path": str(folder), "worker_process": True, "timeout_s": 1.0, "batching": batching})
    assert isinstance(loaded.predictor, ProcessPredictor)
    loaded.predictor.process.backoff = Backoff(initial_s=0.1)
    yield loaded
    loaded.predictor.close()


def test_backoff_doubles_to_its_cap_and_resets_after_a_healthy_worker() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, healthy_s=60.0)
    assert [backoff.after(1.0) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.after(60.0) == 0.5
    assert backoff.after(0.0) == 1.0


def test_frames_carry_arrays_out_of_band_whole_and_aligned() -> None:
    left, right = socket.socketpair()
    sender, receiver = Channel(left), Channel(right)
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2],  # not contiguous: pickled in band
        np.array([b"ab", b"", b"\x00c"], dtype=object),  # BYTES
        np.zeros((0, 7), dtype=np.float16),
        np.arange(3, dtype=np.uint8),
    ]
    try:
        sender.send(Run(arrays))
        received = receiver.receive(time.monotonic() + 5)
    finally:
        sender.close()
        receiver.close()
    assert isinstance(received, Run)
    for sent, got in zip(arrays, received.arrays, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        assert np.array_equal(got, sent)
        assert got.ctypes.data % got.dtype.alignment == 0
    assert received.arrays[0].flags.writeable  # the model may take it without a copy


def test_a_frame_that_breaks_the_framing_is_refused() -> None:
    def receive_raw(data: bytes) -> object:
        left, right = socket.socketpair()
        try:
            left.sendall(data)
            left.shutdown(socket.SHUT_WR)
            return Channel(right).receive(time.monotonic() + 5)
        finally:
            left.close()
            right.close()

    with pytest.raises(FramingError, match="bad frame header"):
        receive_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(FramingError, match="bad frame header"):  # 1 TiB: refused, not allocated
        receive_raw(struct.pack("<4sIQQ", MAGIC, 0, 10, 1 << 40))
    good = b"".join(bytes(part) for part in frame(Run([np.ones(4, np.float32)])))
    count_at = len(MAGIC)
    lying = good[:count_at] + struct.pack("<I", 2) + good[count_at + 4 :]  # says 2 buffers, holds 1
    with pytest.raises(FramingError, match="does not hold"):
        receive_raw(lying)
    with pytest.raises(EOFError):  # the peer went away in the middle of a frame
        receive_raw(good[:-3])
    left, right = socket.socketpair()
    with left, right, pytest.raises(TimeoutError):
        Channel(right).receive(time.monotonic() + 0.1)


def test_a_worker_that_breaks_the_framing_fails_the_load(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    fake = tmp_path / "python"
    fake.write_text(GARBAGE_WORKER.format(python=sys.executable))
    fake.chmod(0o755)
    config = ModelConfig(path=str(tiny_files["exported"]), name="tiny")
    process = ModelProcess(config, "runner", python=str(fake))
    with pytest.raises(ModelLoadError, match="'tiny': its worker process broke the message framing"):
        process.start()


def test_failures_from_the_worker_keep_client_errors_and_hide_the_rest() -> None:
    try:
        raise InvalidInput("expected a word")
    except InvalidInput as exc:
        client = Failure.of(exc).exception()
    assert type(client) is InvalidInput and client.message == "expected a word"
    try:
        raise KeyError("/srv/secret")
    except KeyError as exc:
        model = Failure.of(exc).exception()
    assert type(model) is InferenceFailed
    assert "KeyError" in model.message and "in the worker process" in model.message


def test_process_runner_answers_like_the_model_in_the_server(
    tmp_path: Path, tiny_files: dict[str, Path]
) -> None:
    marker = tmp_path / "ran"
    python = tmp_path / "other-python"
    python.write_text(WRAPPER.format(marker=marker, python=sys.executable))
    python.chmod(0o755)
    config = ModelConfig(path=str(tiny_files["exported"]), name="tiny")
    process = ModelProcess(config, "runner", python=str(python), backoff=Backoff(initial_s=0.1))
    process.start()
    try:
        assert "-m modelbay.runtime.model_worker" in marker.read_text()  # the interpreter given ran it
        runner = ProcessRunner(process)
        local = load_model({"path": str(tiny_files["exported"])}).predictor
        local.setup(None)
        assert (runner.platform, runner.inputs, runner.outputs) == (
            "pytorch_exported",
            local.inputs,
            local.outputs,
        )
        batch = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
        (got,) = runner([batch])
        (want,) = local.runner([batch])  # type: ignore[attr-defined]
        np.testing.assert_array_equal(got, want)

        # Killed from outside while idle (the OOM killer): refused, then restarted, answering again.
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        deadline = time.monotonic() + 5
        while process.serving and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(
            ModelNotReady, match="'tiny' is not ready: its worker process was killed by SIGKILL"
        ):
            runner([batch])
        wait_serving(process)
        np.testing.assert_array_equal(runner([batch])[0], want)
        assert process.restarts == 1 and process.pid != pid
    finally:
        pid = process.pid
        process.close()
    assert pid is not None
    wait_gone(pid, timeout_s=1)


def test_handler_answers_both_doors_from_its_worker(words: LoadedModel) -> None:
    predictor = words.predictor
    assert words.model_dir is not None
    handler = str(words.model_dir / "predict.py")
    assert all(getattr(module, "__file__", None) != handler for module in list(sys.modules.values()))
    assert predictor.platform == "python"
    items = [
        predictor.preprocess("hello"),
        predictor.preprocess("bad"),
        predictor.decode_tensors({"x": np.array([[1.5, -2.0]], np.float32)}),
    ]
    hello, bad, tensor = predictor.predict(items)
    assert predictor.postprocess(hello) == "HELLO"
    with pytest.raises(InvalidInput, match="'bad' is not a word"):
        predictor.postprocess(bad)
    (name, array), *_ = predictor.encode_tensors(tensor).items()
    assert name == "output"
    np.testing.assert_array_equal(array, [[3.0, -4.0]])
    default = predictor.default_output("fallback", 1)  # finished by the worker at start
    assert predictor.postprocess(default) == "fallback"
    assert predictor.encode_tensors(default) == {"output": np.asarray("fallback")}


@pytest.mark.anyio
async def test_a_crash_fails_its_batch_whole_and_the_worker_comes_back(
    words: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    predictor = words.predictor
    assert isinstance(predictor, ProcessPredictor)
    first = predictor.process.pid
    batcher = Batcher(
        predictor.predict, BatchingConfig(max_batch_size=8, max_queue_delay_ms=200), name="words"
    )
    batcher.start()
    try:
        items = [predictor.preprocess(word) for word in ("a", "b", "exit", "c")]
        failures = await asyncio.gather(*(batcher.submit(item) for item in items), return_exceptions=True)
        assert all(isinstance(failure, InferenceFailed) for failure in failures)
        assert {failure.message for failure in failures} == {failures[0].message}  # type: ignore[union-attr]
        assert "model 'words' failed" in failures[0].message  # type: ignore[union-attr]
        assert batcher.stats.batches == 1  # one forward pass, not split: the worker died once
        assert "its worker process" in caplog.text and "exited with status 3" in caplog.text
        with pytest.raises(ModelNotReady, match="model 'words' is not ready"):
            predictor.preprocess("a")  # the simple door refuses at once while it restarts
        with pytest.raises(ModelNotReady, match="model 'words' is not ready"):
            await batcher.submit(items[0])  # an item already tagged: its batch is refused
        await asyncio.to_thread(wait_serving, predictor.process)
        assert await batcher.submit(predictor.preprocess("again")) == "AGAIN"
        assert predictor.process.pid not in (None, first)
    finally:
        await batcher.stop()


def test_a_segfault_is_reported_with_its_signal_and_restarted(words: LoadedModel) -> None:
    predictor = words.predictor
    assert isinstance(predictor, ProcessPredictor)
    wait_serving(predictor.process)
    with pytest.raises(
        WorkerProcessDied, match=r"model 'words': its worker process \(pid \d+\) was killed by SIGSEGV"
    ):
        predictor.predict([predictor.preprocess("segfault")])
    wait_serving(predictor.process)
    assert predictor.postprocess(predictor.predict([predictor.preprocess("ok")])[0]) == "OK"


def test_a_forward_pass_past_timeout_s_kills_the_worker_and_frees_the_thread(words: LoadedModel) -> None:
    predictor = words.predictor
    assert isinstance(predictor, ProcessPredictor)
    wait_serving(predictor.process)
    hung = predictor.process.pid
    assert hung is not None
    started = time.monotonic()
    with pytest.raises(WorkerProcessDied, match=r"was still busy 1.5 s into a batch \(timeout_s \+ 0.5 s\)"):
        predictor.predict([predictor.preprocess("hang")])
    assert time.monotonic() - started < 10  # freed long before the handler's 600 s sleep
    assert not alive(hung)
    wait_serving(predictor.process)
    assert predictor.postprocess(predictor.predict([predictor.preprocess("back")])[0]) == "BACK"


@pytest.mark.anyio
async def test_stopping_the_server_ends_its_worker_processes(tiny_files: dict[str, Path]) -> None:
    entry = {"path": str(tiny_files["exported"]), "name": "tiny", "worker_process": True}
    server = Server(Settings(models=[entry]))  # type: ignore[list-item]
    async with asgi_client(server) as client:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        reply = await client.post("/v2/models/tiny/infer", json=body)
        assert reply.status_code == 200, reply.text
        model = server.registry.get("tiny")
        pid = model.predictor.runner.process.pid  # type: ignore[attr-defined]
        assert pid is not None and alive(pid)
    assert not alive(pid)


def test_a_worker_ends_with_its_server(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from modelbay.loading import load_model
            loaded = load_model({{"path": {str(tiny_files["exported"])!r}, "worker_process": True}})
            print(loaded.predictor.runner.process.pid, flush=True)
            time.sleep(600)
            """
        )
    )
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        worker = int(server.stdout.readline())
        assert alive(worker)
    finally:
        server.kill()  # SIGKILL: the server cannot stop its worker itself
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    wait_gone(worker)


def test_a_default_output_the_handler_cannot_take_refuses_the_load(tmp_path: Path) -> None:
    folder = tmp_path / "strict"
    folder.mkdir()
    (folder / "predict.py").write_text(
        "class Strict:\n"
        "    def predict(self, batch):\n"
        "        return batch\n"
        "    def postprocess(self, output):\n"
        "        return {'label': output['label']}\n"
    )
    entry = {
        "path": str(folder),
        "worker_process": True,
        "batching": {"slo_ms": 100, "default_output": [0.0]},
    }
    with pytest.raises(ModelLoadError, match="'strict' \\(in its worker process\\)"):
        load_model(entry)
