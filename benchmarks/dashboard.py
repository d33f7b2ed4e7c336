"""What an open dashboard costs: its page weight, and the server's time to answer its poll.

    taskset -c 0 python benchmarks/dashboard.py

The page polls `GET /dashboard/api/summary` every 2 s per open tab (modelbay.dashboard.summary:
the Prometheus text of /metrics rendered and parsed again, per model version). This times that
answer in-process for 1, 10 and 50 served model versions, each with traffic on both doors (so
every series exists), best and median of 200 calls; and sums the bytes a first visit to `/` and
to `/docs` downloads (the files each page names, uncompressed as the server sends them).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from modelbay.dashboard.routes import STATIC, STATIC_URL
from modelbay.dashboard.summary import summary
from modelbay.server import Server
from modelbay.settings import Settings
from modelbay.types import InferenceRequest

CALLS = 200
# The module files a page imports (js/main.js imports the others; reference.js imports three).
MODULES = {
    "index.html": ["admin.js", "api.js", "charts.js", "dom.js", "main.js", "playground.js", "snippets.js"],
    "reference.html": ["api.js", "dom.js", "playground.js", "reference.js", "snippets.js"],
}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.files: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and value.startswith(STATIC_URL):
                self.files.append(value.removeprefix(f"{STATIC_URL}/"))


def page_bytes(page: str) -> int:
    links = Links()
    links.feed((STATIC / page).read_text())
    files = {*links.files, *(f"js/{module}" for module in MODULES[page])}
    return (STATIC / page).stat().st_size + sum((STATIC / name).stat().st_size for name in files)


async def time_summary(versions: int) -> tuple[float, float]:
    server = Server(Settings(grpc_port=0))
    for version in range(1, versions + 1):
        model = torch.nn.Linear(4, 3).eval()
        server.add_model(f"m{version % 10}", model, example=torch.zeros(1, 4), version=str(version))
    server.load()
    app = server.app()
    dataplane = app.inference.dataplane
    async with app.starlette.router.lifespan_context(app.starlette):
        for model in dataplane.registry:
            row = np.zeros((1, 4), np.float32)
            await dataplane.infer(InferenceRequest(model.name, {"input": row}, model.version))
            await dataplane.predict(model.name, model.version, [[0.0] * 4])
        assert sum(len(m["versions"]) for m in summary(dataplane, False, "127.0.0.1")["models"]) == versions
        took = []
        for _ in range(CALLS):
            started = time.perf_counter()
            summary(dataplane, False, "127.0.0.1")
            took.append(time.perf_counter() - started)
    return min(took) * 1000, statistics.median(took) * 1000


def main() -> None:
    print("page     bytes on a first visit")
    for page, route in (("index.html", "/"), ("reference.html", "/docs")):
        print(f"{route:<8} {page_bytes(page):>10,}")
    print("\nversions  summary best ms  median ms  share of a core at one poll / 2 s")
    for versions in (1, 10, 50):
        best, median = asyncio.run(time_summary(versions))
        print(f"{versions:>8}  {best:>15.2f}  {median:>9.2f}  {median / 2000:>.3%}")


if __name__ == "__main__":
    main()
