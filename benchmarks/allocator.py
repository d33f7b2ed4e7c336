"""The serving process's malloc settings (modelbay/runtime/process.py) on and off, in A/B pairs.

    python benchmarks/allocator.py             # ~5 minutes

Serves the conv net and the MLP of benchmarks/models.py pinned to core 0, with raw tensors both
ways (OIP binary extension, modelbay's batch = the model's best in-process batch size, at most
64, queue delay 5 ms), once as `modelbay serve` runs (`tune_malloc` on) and once with
`tune_malloc` replaced by a no-op; wrk on core 1, 64 connections. The two alternate, --pairs times
per model, so that the machine's drift hits both alike. Prints req/s and the share of core 0 spent
in the kernel (system + softirq time from /proc/stat during the wrk run: page faults land there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import body, export  # noqa: E402
from run import BIN, binary_body, free_port, modelbay_command, pin, running, wrk  # noqa: E402

# `modelbay serve` with tune_malloc a no-op: own_process() looks it up in its module at call time.
UNTUNED = (
    "import sys, modelbay.runtime.process as p; p.tune_malloc = lambda: False; "
    "from modelbay.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def kernel_share(before: list[int], after: list[int]) -> float:
    """Share of core 0's time in system + softirq between two /proc/stat `cpu0` rows."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return (spent[2] + spent[6]) / max(1, sum(spent[:8]))


def cpu0() -> list[int]:
    """The `cpu0` row of /proc/stat: user nice system idle iowait irq softirq steal ... (ticks)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu0 "):
            return [int(v) for v in line.split()[1:]]
    raise RuntimeError("no cpu0 in /proc/stat")


def best_batch(model: str) -> int:
    """The model's best in-process batch size (run.py's measurement), at most 64."""
    out = subprocess.run(
        [*pin(0), sys.executable, str(HERE / "run.py"), "--in-process", model],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    limits = json.loads(out)
    return min(64, int(max(limits, key=lambda size: limits[size])))


def measure(model: str, artifact: Path, folder: Path, tuned: bool, batch: int, seconds: float) -> dict:
    port = free_port()
    flags = ("--name", model, "--max-batch-size", str(batch), "--max-queue-delay-ms", "5")
    command = modelbay_command(artifact, port, *flags)
    if not tuned:
        command = [str(BIN / "python"), "-c", UNTUNED, *command[1:]]
    url = f"http://127.0.0.1:{port}/predict/{model}"
    with running(command, {}, url, body(model)):
        raw, length = binary_body(model, url, folder)
        infer = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
        wrk(infer, raw, 2, 64, length)  # warm-up
        before = cpu0()
        result = wrk(infer, raw, seconds, 64, length)
        return {**result, "kernel": kernel_share(before, cpu0())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["conv", "mlp"])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=6.0)
    args = parser.parse_args()
    print("| model | pair | malloc tuning | req/s | p99 ms | core 0 in kernel | on / off |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            artifact = export(model, Path(tmp))
            batch = best_batch(model)
            for pair in range(1, args.pairs + 1):
                off = measure(model, artifact, Path(tmp), False, batch, args.duration_s)
                on = measure(model, artifact, Path(tmp), True, batch, args.duration_s)
                for label, row in (("off", off), ("on", on)):
                    ratio = f"{on['rps'] / off['rps']:.2f}x" if label == "on" else ""
                    print(
                        f"| {model} | {pair} | {label} | {row['rps']:.0f} | {row['p99_ms']:.1f} "
                        f"| {row['kernel']:.0%} | {ratio} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
