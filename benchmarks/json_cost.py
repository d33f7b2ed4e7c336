"""What a JSON request body costs before the model sees it, beside the model's own time, one core.

    taskset -c 0 python benchmarks/json_cost.py

For each model of benchmarks/models.py, and for a 1x3x224x224 image tensor (the input of
benchmarks/transports.py), times: msgspec decoding the `{"input": ...}` body, turning the decoded
lists into a float32 array (modelbay's strict `array_from_json`), the same tensor from raw bytes
(the binary extension's `np.frombuffer`), and one forward pass of batch 1 (one torch thread).
Microseconds, the best of 5 rounds of repeated calls.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from models import MODELS, body, build, example  # noqa: E402

from modelbay.codecs.oip_json import array_from_json  # noqa: E402
from modelbay.codecs.raw import array_from_raw  # noqa: E402


def best_us(call: Callable[[], object], seconds: float = 0.3) -> float:
    """Best mean time of one call over 5 rounds of `seconds`, in microseconds."""
    best = float("inf")
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            call()
            count += 1
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def main() -> None:
    torch.set_num_threads(1)
    decoder = msgspec.json.Decoder()
    rows = []
    cases = {name: (body(name), example(name), build(name)) for name in MODELS}
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cases["image 3x224x224"] = (json.dumps({"input": image[0].tolist()}).encode(), image, None)
    for name, (payload, x, module) in cases.items():
        data = decoder.decode(payload)["input"]
        raw = x.numpy().astype("<f4").tobytes()
        shape = list(x.shape[1:])
        with torch.inference_mode():
            forward = best_us(lambda m=module, t=x: m(t)) if module is not None else float("nan")
        rows.append(
            (
                name,
                len(payload),
                best_us(lambda p=payload: decoder.decode(p)),
                best_us(lambda d=data: array_from_json(d, "FP32", None, "input")),
                best_us(lambda r=raw, s=shape: array_from_raw(r, "FP32", s, "input")),
                forward,
            )
        )
    columns = [
        "input",
        "JSON bytes",
        "msgspec decode us",
        "lists -> array us",
        "raw -> array us",
        "forward us",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for name, size, decode, convert, frombuffer, forward in rows:
        print(f"| {name} | {size:,} | {decode:.0f} | {convert:.0f} | {frombuffer:.1f} | {forward:.0f} |")


if __name__ == "__main__":
    main()
