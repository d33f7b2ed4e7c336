"""Adaptive batching against an SLO under a load ramp, beside a sweep of fixed batch sizes, one run.

    python benchmarks/adaptive.py              # ~7 minutes

Serves the MLP of benchmarks/models.py pinned to core 0, once per setting: fixed max_batch_size
1, 8, 32 and 64 (queue delay 0), 32 and 64 with a 5 ms queue delay, adaptive (`slo_ms: 100`,
max_batch_size 64), and adaptive with a `default_output` (zeros). For each, wrk on core 1 ramps
the load: 8, 32, 64 and 160 connections (closed loop; 160 is more than one core can answer
within the SLO), --duration-s each. Prints req/s, p99 and the mean batch (rows, from /metrics)
per stage and setting, and the share of default answers; then whether the adaptive setting kept
p99 under the SLO and its throughput within 10% of the best fixed setting at each stage, and
what the default output did to p99 at each stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import body, export  # noqa: E402
from run import free_port, metric, modelbay_command, running, wrk  # noqa: E402

SLO_MS = 100.0
STAGES = (8, 32, 64, 160)
DEFAULT = json.dumps([0.0] * 1000)  # the MLP's output for one row: 1000 zeros
SETTINGS = {
    "fixed 1": "batching: {max_batch_size: 1}\n",
    "fixed 8": "batching: {max_batch_size: 8}\n",
    "fixed 32": "batching: {max_batch_size: 32}\n",
    "fixed 64": "batching: {max_batch_size: 64}\n",
    "fixed 32, delay 5 ms": "batching: {max_batch_size: 32, max_queue_delay_ms: 5}\n",
    "fixed 64, delay 5 ms": "batching: {max_batch_size: 64, max_queue_delay_ms: 5}\n",
    f"adaptive (slo_ms {SLO_MS:g})": f"batching: {{max_batch_size: 64, slo_ms: {SLO_MS}}}\n",
    "adaptive, default_output": (
        f"batching: {{max_batch_size: 64, slo_ms: {SLO_MS}, default_output: {DEFAULT}}}\n"
    ),
}


def counts(port: int) -> tuple[float, float, float, float]:
    """(batches run, rows in them, requests answered, default answers) so far, from /metrics."""
    return (
        metric(port, "modelbay_batch_size_count"),
        metric(port, "modelbay_batch_size_sum"),
        metric(port, "modelbay_requests_total", status="success"),
        metric(port, "modelbay_default_outputs_total"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=8.0)
    args = parser.parse_args()
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mlp"
        folder.mkdir()
        export("mlp", folder)
        payload = Path(tmp) / "body.json"
        payload.write_bytes(body("mlp"))
        for label, manifest in SETTINGS.items():
            (folder / "modelbay.yaml").write_text(manifest)
            port = free_port()
            command = modelbay_command(folder, port)
            url = f"http://127.0.0.1:{port}/predict/mlp"
            with running(command, {}, url, payload.read_bytes()):
                wrk(url, payload, 2, STAGES[0])  # warm-up
                results[label] = {}
                for c in STAGES:
                    before = counts(port)
                    results[label][c] = wrk(url, payload, args.duration_s, c)
                    after = counts(port)
                    runs, rows, answered, defaults = (a - b for a, b in zip(after, before, strict=True))
                    results[label][c]["mean_batch"] = rows / max(1.0, runs)
                    results[label][c]["defaults"] = defaults / max(1.0, answered)
            print(label, json.dumps({c: round(r["rps"]) for c, r in results[label].items()}), file=sys.stderr)
    adaptive = next(label for label in SETTINGS if label.startswith("adaptive ("))
    fixed = [label for label in SETTINGS if label.startswith("fixed")]
    print("| setting | " + " | ".join(f"{c} connections: req/s, p99 ms, mean batch" for c in STAGES) + " |")
    print("|---|" + "---|" * len(STAGES))
    for label, stages in results.items():
        cells = [
            f"{stages[c]['rps']:.0f}, {stages[c]['p99_ms']:.1f}, {stages[c]['mean_batch']:.1f}"
            + (f", {stages[c]['defaults']:.0%} default" if stages[c]["defaults"] else "")
            for c in STAGES
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for c in STAGES:
        best_label = max(fixed, key=lambda label: results[label][c]["rps"])
        best = results[best_label][c]["rps"]
        mine = results[adaptive][c]
        print(
            f"- {c} connections: adaptive p99 {mine['p99_ms']:.1f} ms (SLO {SLO_MS:g}: "
            f"{'met' if mine['p99_ms'] <= SLO_MS else 'missed'}), {mine['rps']:.0f} req/s = "
            f"{mine['rps'] / best:.0%} of the best fixed setting ({best_label}, {best:.0f} req/s)"
        )
    for c in STAGES:
        mine = results["adaptive, default_output"][c]
        print(
            f"- {c} connections, with default_output: p99 {mine['p99_ms']:.1f} ms "
            f"({'met' if mine['p99_ms'] <= SLO_MS else 'missed'}), "
            f"{mine['defaults']:.1%} of the answers the default"
        )


if __name__ == "__main__":
    main()
