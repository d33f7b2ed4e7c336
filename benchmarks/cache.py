"""The prediction cache on a skewed workload: the same server with and without `cache:`, one run.

    python benchmarks/cache.py                 # ~1 minute

Serves the MLP of benchmarks/models.py (1024->4096->4096->1000, ~1 ms per item) pinned to core 0;
wrk on core 1 (64 connections) sends `{"input": example_k}` where k is drawn from a Zipf law
(exponent 1.1) over 1,000 distinct examples, chosen per request inside wrk's Lua. Prints
requests/s, p50/p99 and the hit rate read from /metrics, with the cache off and on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import export  # noqa: E402
from run import free_port, metric, modelbay_command, running, wrk  # noqa: E402

DISTINCT = 1000
EXPONENT = 1.1


def bodies(folder: Path) -> Path:
    """A Lua script whose `request()` sends one of DISTINCT bodies with Zipf-distributed probability."""
    rng = np.random.default_rng(0)
    weights = 1 / np.arange(1, DISTINCT + 1) ** EXPONENT
    cumulative = np.cumsum(weights / weights.sum())
    lines = ["local bodies = {"]
    for _ in range(DISTINCT):
        lines.append("[[" + json.dumps({"input": rng.random(1024).round(4).tolist()}) + "]],")
    lines.append("}")
    lines.append("local cdf = {" + ",".join(f"{c:.9f}" for c in cumulative) + "}")
    lines.append('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"')
    lines.append("""request = function()
  local u = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format(nil, nil, nil, bodies[lo])
end""")
    script = folder / "zipf.lua"
    script.write_text("\n".join(lines))
    return script


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=15.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mlp"
        folder.mkdir()
        export("mlp", folder)
        script = bodies(Path(tmp))
        probe = json.dumps({"input": [0.0] * 1024}).encode()
        for label, cache in (("cache off", ""), ("cache on", "cache: {max_entries: 4096}\n")):
            (folder / "modelbay.yaml").write_text("batching: {max_batch_size: 64}\n" + cache)
            port = free_port()
            command = modelbay_command(folder, port)
            url = f"http://127.0.0.1:{port}/predict/mlp"
            with running(command, {}, url, probe):
                wrk(url, script, 2, 64, script=script)  # warm-up (also fills the cache)
                result = wrk(url, script, args.duration_s, 64, script=script)
                hits = metric(port, "modelbay_cache_requests_total", result="hit")
                misses = metric(port, "modelbay_cache_requests_total", result="miss")
            rate = hits / (hits + misses) if hits + misses else 0.0
            rows.append((label, result, rate))
    base = rows[0][1]["rps"]
    print("| server | req/s | p50 ms | p99 ms | cache hit rate | vs cache off |")
    print("|---|---|---|---|---|---|")
    for label, result, rate in rows:
        print(
            f"| modelbay, {label} | {result['rps']:.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} "
            f"| {rate:.0%} | {result['rps'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
