"""The torch-free install against installs with torch, side by side in one run.

    python benchmarks/torch_free.py --find-links /opt/wheels        # ~2 min with uv's cache warm
    python benchmarks/torch_free.py --rounds 3

Fresh environments are built by uv (tests/envs.py) in a temporary folder, from commits of this
repository (`git archive`: a commit, not the working tree):
  torch-free      `modelbay[onnx]` at --head (HEAD): no torch
  with torch      `modelbay[onnx,torch]` at --head
  before          `modelbay[onnx]` at --before (torch a base dependency, imported by every
                  `modelbay serve`): what the same command cost until this change
`--find-links DIR` goes to uv for the environments with torch: a folder holding the CPU wheel of
torch 2.13.0 (PyPI's Linux wheel is the CUDA build, several GB more of nvidia-* packages).
Measured per environment: the size of its site-packages (`du -sk`), and `modelbay serve
examples/digits/artifacts/digits.onnx` (the digits network as ONNX): seconds from process start to
/v2/health/ready answering 200 (polled every 10 ms), the CPU seconds the server used until then
(user + system, /proc/PID/stat: what a busy machine inflates least), resident memory (VmRSS) once
ready and after 100 OIP infer requests of one digit each (answers checked against onnxruntime).
The "with torch" environment also serves digits.pt2, the same network as a torch.export program,
for scale. Rounds alternate the rows, their order reversed every round, after one unmeasured start
each (so every row finds its files in the page cache); the table keeps each row's medians and its
fastest start. Only 127.0.0.1 is contacted; servers are stopped by PID.
Prints a Markdown table; writes benchmarks/results/torch_free.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from run import free_port  # noqa: E402
from tests.conftest import stop  # noqa: E402
from tests.envs import fresh_environment  # noqa: E402

RESULTS = HERE / "results"
DIGITS = ROOT / "examples" / "digits" / "artifacts"
BEFORE = "5926711"  # the last commit where torch was a base dependency, imported by `modelbay serve`
REQUESTS = 100


def checkout(revision: str, folder: Path) -> Path:
    """The tree of `revision` of this repository, extracted into `folder` (`git archive`): the commit
    itself, whatever the working tree holds."""
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def build(folder: Path, head: str, before: str, find_links: list[str]) -> dict[str, Path]:
    """The three environments (their bin/ folders), keyed by row name."""
    links = [option for link in find_links for option in ("--find-links", link)]
    new, old = checkout(head, folder / "head-src"), checkout(before, folder / "before-src")
    return {
        "torch-free": fresh_environment(folder / "torch-free", "onnx", source=new),
        "with torch": fresh_environment(folder / "with-torch", "onnx,torch", uv_args=links, source=new),
        "before": fresh_environment(folder / "before", "onnx", uv_args=links, source=old),
    }


def describe(bin_dir: Path) -> dict:
    """Size of the environment's site-packages (du -sk, KiB), its package count, and its torch."""
    site = next((bin_dir.parent / "lib").glob("python3*/site-packages"))
    kib = int(subprocess.run(["du", "-sk", str(site)], capture_output=True, text=True).stdout.split()[0])
    packages = len(list(site.glob("*.dist-info")))
    torch = [p.name.removesuffix(".dist-info").split("-")[1] for p in site.glob("torch-*.dist-info")]
    return {
        "site_packages_mib": round(kib / 1024, 1),
        "packages": packages,
        "torch": torch[0] if torch else None,
    }


def cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has used so far, user + system, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (VmRSS, /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def started(bin_dir: Path, model: Path, port: int) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """`modelbay serve MODEL` of that environment on `port`: (its process, seconds to ready).
    Raises RuntimeError with the server's last output when it exits or is not ready in 120 s."""
    command = [str(bin_dir / "modelbay"), "serve", str(model), "--name", "digits", "--port", str(port)]
    command += ["--grpc-port", "0", "--log-level", "warning"]
    with tempfile.TemporaryFile() as output:
        begin = time.monotonic()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/v2/health/ready"
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() - begin > 120:
                    output.seek(0)
                    raise RuntimeError(f"{command} did not get ready:\n{output.read().decode()[-2000:]}")
                time.sleep(0.01)
            yield process, time.monotonic() - begin
        finally:
            stop(process)


def one_round(bin_dir: Path, model: Path, port: int, rows: np.ndarray, want: np.ndarray) -> dict:
    """Start, measure, send REQUESTS requests (answers checked), measure again, stop."""
    with started(bin_dir, model, port) as (process, ready_s):
        ready_rss, ready_cpu = rss_mib(process.pid), cpu_s(process.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(REQUESTS):
                row = rows[i % len(rows)]
                body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8]}]}
                body["inputs"][0]["data"] = row.ravel().tolist()
                reply = client.post("/v2/models/digits/infer", json=body, timeout=30)
                got = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)
                np.testing.assert_allclose(got, want[i % len(rows)], rtol=1e-4, atol=1e-4)
        return {
            "ready_s": ready_s,
            "cpu_to_ready_s": ready_cpu,
            "rss_ready_mib": ready_rss,
            "rss_after_mib": rss_mib(process.pid),
        }


def measure(envs: dict[str, Path], rounds: int, port: int) -> dict[str, list[dict]]:
    """Every round of every row: (environment, model file) started, asked, measured."""
    rows = (np.random.default_rng(0).integers(0, 17, (10, 1, 8, 8)) / 16.0).astype(np.float32)
    session = onnxruntime.InferenceSession(str(DIGITS / "digits.onnx"), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"image": rows})
    plan = {
        "torch-free, digits.onnx": (envs["torch-free"], DIGITS / "digits.onnx"),
        "with torch, digits.onnx": (envs["with torch"], DIGITS / "digits.onnx"),
        "before, digits.onnx": (envs["before"], DIGITS / "digits.onnx"),
        "with torch, digits.pt2": (envs["with torch"], DIGITS / "digits.pt2"),
    }
    for bin_dir, model in plan.values():  # unmeasured: the files into the page cache
        one_round(bin_dir, model, port, rows, want)
    results: dict[str, list[dict]] = {name: [] for name in plan}
    for index in range(rounds):
        order = list(plan) if index % 2 == 0 else list(reversed(plan))
        for name in order:
            results[name].append(one_round(*plan[name], port, rows, want))
    return results


def summary(rounds: list[dict]) -> dict:
    """Each measure's median over the rounds, and the fastest start (a shared machine only ever
    makes a start slower)."""
    medians = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}
    return {**medians, "ready_s_min": round(min(r["ready_s"] for r in rounds), 3)}


def table(sizes: dict[str, dict], results: dict[str, list[dict]]) -> str:
    lines = [
        "| environment, model | site-packages | packages | start to ready: fastest, median "
        "| CPU to ready | RSS ready | RSS after 100 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rounds in results.items():
        env = name.split(",")[0]
        size, med = sizes[env], summary(rounds)
        lines.append(
            f"| {name} | {size['site_packages_mib']:.0f} MiB | {size['packages']} "
            f"| {med['ready_s_min']:.2f} s, {med['ready_s']:.2f} s | {med['cpu_to_ready_s']:.2f} s "
            f"| {med['rss_ready_mib']:.0f} MiB | {med['rss_after_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--head", default="HEAD", help="the commit of the other rows (HEAD)")
    parser.add_argument("--before", default=BEFORE, help=f"the commit of the 'before' row ({BEFORE})")
    parser.add_argument(
        "--find-links", action="append", default=[], help="a folder of wheels (torch's CPU build)"
    )
    parser.add_argument("--port", type=int, default=0, help="the servers' port (default: a free one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torch-free-") as tmp:
        envs = build(Path(tmp), args.head, args.before, args.find_links)
        sizes = {name: describe(bin_dir) for name, bin_dir in envs.items()}
        results = measure(envs, args.rounds, args.port or free_port())
    print(table(sizes, results))
    out = {
        "command": " ".join(["python", "benchmarks/torch_free.py", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
        "head": subprocess.run(
            ["git", "rev-parse", "--short", args.head], capture_output=True, text=True
        ).stdout.strip(),
        "before": args.before,
        "requests": REQUESTS,
        "environments": sizes,
        "summary": {name: summary(rounds) for name, rounds in results.items()},
        "rounds": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "torch_free.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
