"""What some of modelbay's per-request steps cost, each alone, for an MLP-shaped request.

    taskset -c 0 python benchmarks/request_cost.py      # ~30 s

The request: one FP32 [1, 1024] input sent raw (OIP binary extension), binary output asked for;
the answer: one FP32 [1, 1000] output. Times, in microseconds per request (best of 3): decoding
the request (`oip_json.decode_request`), encoding the answer (`oip_json.encode_response`), and
recording its metrics (`ModelMetrics.on_request`, plus its share of `on_batch` in a batch of 64),
once with prometheus-client's in-memory values and once in its multiprocess mode (what
`--workers N` uses; measured in a child process, since the mode is fixed at import). And what
ending requests on time adds to each (issue 9), on uvloop as the server runs: the request guard
(`Dataplane._within`: a RequestContext, its deadline, the in-flight table the deadline sweep reads)
and the hot routes' context with its disconnect watch, against awaiting the same work bare.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable

import numpy as np

from modelbay.codecs import oip_json
from modelbay.http.inference import _client_gone
from modelbay.metrics import Metrics, multiprocess_mode
from modelbay.predictor import Predictor
from modelbay.registry.registry import ModelRegistry, ServedModel
from modelbay.runtime.context import RequestContext
from modelbay.runtime.dataplane import Dataplane
from modelbay.settings import BatchingConfig
from modelbay.types import InferenceResponse


def per_call_us(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=3)) / number * 1e6


def metrics_cost() -> tuple[float, float]:
    """(on_request us, on_batch us per request of a 64-request batch) in this process's mode."""
    metrics = Metrics().for_model("m", "1", lambda: 0.0)
    waits = [0.001] * 64
    request = per_call_us(lambda: metrics.on_request("infer", 0.001, None), 50_000)
    batch = per_call_us(lambda: metrics.on_batch(64, waits, 0.01), 2_000) / 64
    return request, batch


async def _work() -> int:
    return 1


async def _receive() -> dict[str, object]:
    return {"type": "http.disconnect"}


async def guard_costs(number: int = 100_000) -> tuple[float, float]:
    """(request guard us, disconnect watch us) per request, each minus the bare await, best of 3."""
    registry = ModelRegistry()
    model = ServedModel("m", "1", Predictor(), BatchingConfig(), timeout_s=60.0)
    registry.add(model)
    dataplane = Dataplane(registry)

    async def timed(step: object) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(number):
                if step == "bare":
                    await _work()
                elif step == "guard":
                    await dataplane._within(None, model, _work())
                else:
                    RequestContext(watch=functools.partial(_client_gone, _receive))
                    await _work()
            best = min(best, time.perf_counter() - started)
        return best / number * 1e6

    bare = await timed("bare")
    return await timed("guard") - bare, await timed("watch") - bare


def run_guard_costs() -> tuple[float, float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(guard_costs())
    return uvloop.run(guard_costs())


def main() -> None:
    if "--metrics-only" in sys.argv:
        print(json.dumps(metrics_cost()))
        return
    raw = np.random.default_rng(0).random((1, 1024), dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 1024],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + raw
    _, binary = oip_json.decode_request(body, "m", None, len(header))
    answer = InferenceResponse("m", "1", {"y": np.zeros((1, 1000), np.float32)}, None)
    rows = [
        (
            "decode_request",
            per_call_us(lambda: oip_json.decode_request(body, "m", None, len(header)), 50_000),
        ),
        ("encode_response", per_call_us(lambda: oip_json.encode_response(answer, binary), 50_000)),
    ]
    assert not multiprocess_mode(), "run without PROMETHEUS_MULTIPROC_DIR"
    request, batch = metrics_cost()
    rows += [("metrics, one process: on_request", request), ("metrics, one process: on_batch share", batch)]
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.run(
            [sys.executable, __file__, "--metrics-only"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder},
            capture_output=True,
            text=True,
            check=True,
        )
    request, batch = json.loads(child.stdout)
    rows += [("metrics, multiprocess: on_request", request), ("metrics, multiprocess: on_batch share", batch)]
    guard, watch = run_guard_costs()
    rows += [
        ("request guard (context, deadline, in-flight)", guard),
        ("HTTP door's context and watch", watch),
    ]
    print("| step | us per request |")
    print("|---|---|")
    for label, cost in rows:
        print(f"| {label} | {cost:.2f} |")


if __name__ == "__main__":
    main()
