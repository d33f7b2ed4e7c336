"""A real `modelbay serve` with a model in a worker process that crashes, segfaults and hangs,
beside a model in the server that keeps answering throughout."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import Served, serve_process

pytestmark = pytest.mark.e2e

HANDLER = '''
import ctypes
import os
import time


class Words:
    """Upper-cases words. Three misbehave: "exit" ends the process, "segfault" reads address 0,
    "hang" sleeps far past the model's timeout_s."""

    def predict(self, batch):
        for word in batch:
            if word == "exit":
                os._exit(3)
            if word == "segfault":
                ctypes.string_at(0)
            if word == "hang":
                time.sleep(600)
        return [word.upper() for word in batch]
'''
MANIFEST = "worker_process: true\ntimeout_s: 2\n"
ROW = [0.5, -1.0, 2.0, 0.0]


def words(url: str, word: str) -> httpx.Response:
    return httpx.post(f"{url}/predict/words", json={"input": word}, timeout=30)


def tiny_answers(url: str, expected: np.ndarray) -> None:
    """The in-server model answers, and rightly."""
    reply = httpx.post(f"{url}/predict/tiny", json={"input": ROW}, timeout=30)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], expected, rtol=1e-5)


def back_after_restart(url: str, timeout_s: float = 60.0) -> None:
    """Ask the words model until it answers again; meanwhile it may only say 503, naming itself."""
    deadline = time.monotonic() + timeout_s
    while (reply := words(url, "back")).status_code != 200:
        assert reply.status_code == 503, reply.text
        assert "model 'words' is not ready: its worker process" in reply.json()["error"]
        assert time.monotonic() < deadline, "the worker process was not restarted"
        time.sleep(0.1)
    assert reply.json()["predictions"] == "BACK"


def state_and_parent(pid: int) -> tuple[str, int]:
    """Process `pid`'s state letter and parent id from /proc ("X", 0 once it is gone)."""
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return "X", 0
    return state, int(parent)


def workers_of(pid: int) -> list[int]:
    """The live child processes of process `pid` (its model worker processes)."""
    found = []
    for child in (int(path.name) for path in Path("/proc").glob("[0-9]*")):
        state, parent = state_and_parent(child)
        if parent == pid and state not in "XZ":
            found.append(child)
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_files: dict[str, Path]) -> Iterator[Served]:
    """The server, stopped by SIGTERM at the end; its worker processes must end with it."""
    root = tmp_path_factory.mktemp("worker-process")
    (root / "words").mkdir()
    (root / "words" / "predict.py").write_text(HANDLER)
    (root / "words" / "modelbay.yaml").write_text(MANIFEST)
    shutil.copy(tiny_files["exported"], root / "tiny.pt2")
    with serve_process(str(root / "words"), str(root / "tiny.pt2")) as running:
        yield running
        workers = workers_of(running.process.pid)
        assert len(workers) == 1  # the words model's; tiny runs in the server
    deadline = time.monotonic() + 10
    while any(state_and_parent(pid)[0] not in "XZ" for pid in workers):
        assert time.monotonic() < deadline, f"worker processes {workers} outlived their server"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def expected(tiny: torch.nn.Module) -> np.ndarray:
    return tiny(torch.tensor([ROW])).detach().numpy()[0]


@pytest.mark.parametrize(("word", "how"), [("exit", "exited with status 3"), ("segfault", "SIGSEGV")])
def test_a_crashing_worker_fails_its_request_and_comes_back(
    served: Served, expected: np.ndarray, word: str, how: str
) -> None:
    assert words(served.url, "hello").json()["predictions"] == "HELLO"
    reply = words(served.url, word)
    assert reply.status_code == 500
    assert reply.json()["error"].startswith("model 'words' failed (error id ")
    # Not ready while its worker restarts (at least the 0.5 s backoff), so a balancer can tell.
    assert httpx.get(f"{served.url}/v2/models/words/ready").status_code != 200
    tiny_answers(served.url, expected)  # while the worker restarts
    back_after_restart(served.url)
    assert httpx.get(f"{served.url}/v2/models/words/ready").status_code == 200
    tiny_answers(served.url, expected)
    assert how in served.log()


def test_a_hanging_worker_gets_504_and_comes_back(served: Served, expected: np.ndarray) -> None:
    back_after_restart(served.url)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        hanging = pool.submit(words, served.url, "hang")
        time.sleep(0.5)
        tiny_answers(served.url, expected)  # while the worker hangs
        reply = hanging.result()
    assert reply.status_code == 504
    assert "model 'words' did not answer within" in reply.json()["error"]
    back_after_restart(served.url)
    assert "was still busy 2.5 s into a batch" in served.log()
