"""What traces and access lines cost a request when both are off: the bookkeeping they added to
every request (issue 11, items 3-4), each piece timed on its own with timeit, one process.

    python benchmarks/observability_overhead.py

The pieces: making a request id (`modelbay.logs.request_id`), ending a request with no span and
access lines off (`modelbay.logs.finish`: one `span is None` check, one logger level check), the
context variable the batcher and hooks read (`CURRENT`: one set, two gets, one reset), and three
`time.monotonic()` readings (arrival, and the two phase marks of a door). End-to-end runs of the
same question are in benchmarks/results/observability_off.json (`benchmarks/hardening_cost.py
--base da79790 --head HEAD`), whose per-round spread on a shared VM is wider than this sum.
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from modelbay.logs import finish, request_id
from modelbay.runtime.context import CURRENT, RequestContext

COUNT = 200_000


def main() -> None:
    context = RequestContext(request_id="x")

    def variable() -> None:
        token = CURRENT.set(context)
        CURRENT.get()
        CURRENT.get()
        CURRENT.reset(token)

    pieces = {
        "request id": lambda: request_id(None),
        "finish (no span, access lines off)": lambda: finish(context, "http", "POST /x", "m", "1", 200, 0.0),
        "context variable (set, 2 gets, reset)": variable,
        "3 x time.monotonic()": lambda: (time.monotonic(), time.monotonic(), time.monotonic()),
    }
    total = 0.0
    for name, piece in pieces.items():
        best = min(timeit.repeat(piece, number=COUNT, repeat=5)) / COUNT * 1e6
        total += best
        print(f"{name:40} {best:6.3f} us")
    print(f"{'total per request':40} {total:6.3f} us")


if __name__ == "__main__":
    main()
