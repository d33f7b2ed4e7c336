"""Does `modelbay bench` pick a good setting? Its pick against a full sweep, side by side in one run.

    python benchmarks/bench_pick.py                      # the MLP, ~12 minutes
    python benchmarks/bench_pick.py --model conv --concurrency 32

1. `modelbay bench` on the model (exported to .pt2 by benchmarks/models.py) with its default grid
   (max_batch_size 8, 32, 64 x max_queue_delay_ms 0, 5, and adaptive under --slo-ms) at one
   concurrency: its pick.
2. The full sweep: max_batch_size 1, 2, 4, 8, 16, 32, 64, 128 x max_queue_delay_ms 0, 1, 2, 5, 10,
   every setting served and measured with the same load generator (modelbay.bench) at the same
   concurrency, in an order shuffled with a fixed seed (so a drift of the machine's speed does not
   favour one corner of the grid). The pick's own setting is measured there too.
Prints the full sweep's best setting within the SLO, the pick's throughput measured in the full
sweep, and their ratio; then the two measured again head to head in --rounds alternating rounds
(medians), the ratio the issue asks to be at least 0.9. Writes benchmarks/results/bench_pick.json.
Only 127.0.0.1 is contacted; every server is stopped by its process id.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from models import export  # noqa: E402

from modelbay.bench.load import Measured, Target, measure  # noqa: E402
from modelbay.bench.sweep import Setting, example_body, started  # noqa: E402

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
DELAYS_MS = (0.0, 1.0, 2.0, 5.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mlp", choices=["mlp", "conv", "linear"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3, help="head-to-head rounds of the pick and the best")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_pick.json")
    args = parser.parse_args()
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.model
        folder.mkdir()
        artifact = export(args.model, folder)
        picked = pick(artifact, args)
        print(f"modelbay bench picked: {picked['setting']} ({picked['rps']:.0f} req/s in its own run)")
        settings = [Setting(b, d) for b in BATCH_SIZES for d in DELAYS_MS]
        chosen = Setting(**picked["batching"])
        if chosen not in settings:  # an adaptive pick: measured in the sweep too
            settings.append(chosen)
        random.Random(0).shuffle(settings)
        sweep = []
        for setting in settings:
            with started(str(artifact), args.model, setting) as url:
                body = example_body(url, args.model, {})
                target = Target.of(
                    f"{url}/v2/models/{args.model}/infer", body, {"Content-Type": "application/json"}
                )
                measured = measure(target, args.concurrency, args.duration_s, 1.0, processes=1)
            row = {"setting": setting.label, "batching": setting.batching(), **measured_row(measured)}
            sweep.append(row)
            print(
                f"  {setting.label:40} {measured.rps:8.0f} req/s  p99 {measured.p99_ms:7.2f} ms",
                file=sys.stderr,
            )
        meeting = [row for row in sweep if row["errors"] == 0 and row["p99_ms"] <= args.slo_ms]
        full_best = max(meeting, key=lambda row: row["rps"])
        pick_in_sweep = next(row for row in sweep if row["batching"] == picked["batching"])
        ratio = pick_in_sweep["rps"] / full_best["rps"]
        print(
            f"full sweep best within {args.slo_ms:g} ms: {full_best['setting']} {full_best['rps']:.0f} req/s"
        )
        print(f"the pick in the full sweep: {pick_in_sweep['rps']:.0f} req/s = {ratio:.2f} of the best")
        head_to_head = rematch(
            artifact, args, Setting(**picked["batching"]), Setting(**full_best["batching"])
        )
    print(
        f"head to head, {args.rounds} alternating rounds: the pick {head_to_head['pick_rps']:.0f} req/s, "
        f"the sweep's best {head_to_head['best_rps']:.0f} req/s (medians): {head_to_head['ratio']:.2f}"
    )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "concurrency": args.concurrency,
                "slo_ms": args.slo_ms,
                "duration_s": args.duration_s,
                "pick": picked,
                "full_sweep_best": full_best,
                "pick_in_full_sweep": pick_in_sweep,
                "ratio": ratio,
                "head_to_head": head_to_head,
                "sweep": sweep,
                "seconds": time.monotonic() - started_at,
            },
            indent=2,
        )
    )


def rematch(artifact: Path, args: argparse.Namespace, pick: Setting, best: Setting) -> dict:
    """The pick and the sweep's best measured again in alternating rounds (a single sweep point is
    as noisy as the gap it judges on a shared machine); their median requests/s and ratio."""
    measured: dict[Setting, list[float]] = {pick: [], best: []}
    for round_ in range(args.rounds):
        for setting in (pick, best) if round_ % 2 == 0 else (best, pick):
            with started(str(artifact), args.model, setting) as url:
                body = example_body(url, args.model, {})
                target = Target.of(
                    f"{url}/v2/models/{args.model}/infer", body, {"Content-Type": "application/json"}
                )
                measured[setting].append(measure(target, args.concurrency, args.duration_s, 1.0).rps)
    pick_rps, best_rps = (statistics.median(measured[s]) for s in (pick, best))
    return {
        "pick_rps": pick_rps,
        "best_rps": best_rps,
        "ratio": pick_rps / best_rps,
        "rounds": {"pick": measured[pick], "best": measured[best]},
    }


def pick(artifact: Path, args: argparse.Namespace) -> dict:
    """Run `modelbay bench` with its default grid at the one concurrency; its chosen row."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "modelbay.cli.main", "bench", str(artifact), "--name", args.model]
        command += ["--concurrency", str(args.concurrency), "--slo-ms", f"{args.slo_ms:g}"]
        command += ["--duration-s", f"{args.duration_s:g}", "--processes", "1", "--json", out.name]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
        rows = json.loads(Path(out.name).read_text())
    return next(row for row in rows if row["best"])


def measured_row(measured: Measured) -> dict:
    return {
        "rps": measured.rps,
        "p50_ms": measured.p50_ms,
        "p99_ms": measured.p99_ms,
        "errors": measured.errors,
        "requests": measured.requests,
    }


if __name__ == "__main__":
    main()
