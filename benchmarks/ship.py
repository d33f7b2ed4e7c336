"""`modelbay build` on the digits network as ONNX and as a torch.export program, side by side.

    python benchmarks/ship.py                       # about 30 s
    python benchmarks/ship.py --podman --base localhost/python-standin:3.11-bookworm

Per model: seconds `modelbay build` takes (median of --rounds, each building modelbay's wheel
again), the packages constraints.txt pins, the context's size, and what those packages occupy
installed in this environment (the sum of their RECORD files' sizes: about what pip puts in the
image's site-packages). With --podman, the context is also built by `podman build` (vfs storage,
as root here), and the image's size is reported (`podman image inspect`); --base goes to
`modelbay build` (a local image standing in for python:X.Y.Z-slim-bookworm when no registry is
reachable).
Prints a Markdown table; writes benchmarks/results/ship.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits" / "artifacts"
SETTINGS = (ROOT / "src" / "modelbay" / "builtin" / "digits" / "modelbay.yaml").read_text()
MIB = 1 << 20


def repositories(work: Path) -> dict[str, Path]:
    """The digits CNN as a one-model repository, once as ONNX, once as a .pt2."""
    found = {}
    for label, file in (("digits.onnx (ONNX)", "digits.onnx"), ("digits.pt2 (torch.export)", "digits.pt2")):
        model = work / file.replace(".", "-") / "digits"
        (model / "1").mkdir(parents=True)
        shutil.copyfile(DIGITS / file, model / "1" / file)
        settings = [
            line for line in SETTINGS.splitlines() if not line.startswith(("name:", "version:", "weights:"))
        ]
        (model / "modelbay.yaml").write_text("\n".join(settings) + "\n")
        found[label] = model.parent
    return found


def installed_bytes(pins: dict[str, str]) -> int:
    """Bytes the pinned distributions' files occupy in this environment (their RECORD sizes)."""
    total = 0
    for name in pins:
        for file in importlib.metadata.distribution(name).files or []:
            total += file.size or 0
    return total


def build(source: Path, out: Path, base: str | None) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "modelbay.cli.main", "build", str(source), "-t", "digits:1"]
    command += ["--out", str(out), *(["--base", base] if base else [])]
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def podman_size(context: Path, tag: str) -> int | str:
    """Build `context` with podman (docker format: OCI drops HEALTHCHECK); the image's size in
    bytes, or why it could not be built (the last lines podman printed)."""
    podman = ["podman", "--storage-driver", "vfs"]
    # chroot isolation: this machine's crun cannot create containers (hybrid cgroups)
    command = [*podman, "build", "--format", "docker", "--isolation", "chroot", "--network", "host"]
    built = subprocess.run([*command, "-t", tag, str(context)], capture_output=True, text=True)
    if built.returncode != 0:
        return "failed: " + " | ".join(built.stdout.strip().splitlines()[-2:])[:300]
    inspected = subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.Size}}", tag],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(inspected.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--podman", action="store_true", help="also build each image with podman")
    parser.add_argument("--base", help="with --podman: the local FROM image standing in for the slim base")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelbay-ship-bench-") as work:
        for label, source in repositories(Path(work)).items():
            out = Path(work) / f"context-{source.name}"
            seconds = [build(source, out, args.base) for _ in range(args.rounds)]
            lines = (out / "constraints.txt").read_text().splitlines()
            pins = dict(line.split("==") for line in lines if not line.startswith("#"))
            context_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            row = {
                "model": label,
                "build_s": round(statistics.median(seconds), 2),
                "pinned": len(pins),
                "torch": pins.get("torch", "no"),
                "context_kib": round(context_bytes / 1024),
                "installed_mib": round(installed_bytes(pins) / MIB),
            }
            if args.podman:
                tag = f"localhost/modelbay-bench-{source.name}:1"
                size = podman_size(out, tag)
                row["image_mib"] = round(size / MIB) if isinstance(size, int) else size
            rows.append(row)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    results = ROOT / "benchmarks" / "results" / "ship.json"
    results.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
