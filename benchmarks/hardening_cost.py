"""What issue 9's hardening costs on the request path: the server before it and after it, side by
side in one run, on one core each.

    python benchmarks/hardening_cost.py                               # 3 rows, 3 rounds of 10 s (~4.5 min)
    python benchmarks/hardening_cost.py --duration-s 3 --rounds 1     # a quick look (~40 s)
    python benchmarks/hardening_cost.py --rows mlp-oip-json --rounds 3
    python benchmarks/hardening_cost.py --base HEAD --head HEAD --head-auth   # API keys off vs on
    python benchmarks/hardening_cost.py --base HEAD --head HEAD --head-flags=--tracing --otlp-sink

Both trees are checked out from git into a temporary folder (`git worktree add --detach`, removed at
the end): --base (f1c79e7, the last commit before the hardening) and --head (HEAD), so that work
in progress in this checkout is not measured. Each tree's own `modelbay serve` runs with this venv
and PYTHONPATH=<tree>/src; a one-off `import modelbay` under the same environment must resolve to
that tree's source, or the run stops. What the hardening adds per request: a RequestContext with a
deadline swept by the dataplane, the table of requests in flight, a disconnect watch on the hot
routes, uvicorn's protocol with a read timeout (modelbay/http/protocol.py), uvicorn's
limit_concurrency, per-model hook thread pools, and JSON tensor data typed while decoding.

Rows, each at --connections (64) with run.py's modelbay settings (max batch 64, 5 ms queue delay):
  linear-json    Linear(64->10), the simple door: POST /predict/linear, {"input": [64 floats]}
  mlp-binary     the MLP 1024->4096->4096->1000, OIP binary extension both ways (/v2/models/mlp/infer)
  mlp-oip-json   the MLP through the OIP JSON door: 1024 floats as JSON data, 1000 back as JSON
The server is pinned to core 0 and wrk to core 1 (run.py's `running` and `wrk`). In each round
base and head run back to back per model, their order swapped every round (base, head; then head,
base), so that a drift of the machine's speed shows as disagreeing rounds rather than as a cost.
The table keeps each side's best round (a shared machine only ever makes a run slower) and lists
every round's head/base ratio beside it.
With --head-auth, the head server runs with `--auth` (one infer key, no rate limit, made by the
head tree's `modelbay keys create`) and every request of its side sends the key
(`Authorization: Bearer`): the cost of the access check (issue 11), e.g. against the same commit
as base. --base-flags / --head-flags add `modelbay serve` flags to one side (e.g. --head-flags
"--tracing" or "--no-access-log"), --head-env VAR=VALUE environment variables (e.g.
OTEL_TRACES_SAMPLER=traceidratio with OTEL_TRACES_SAMPLER_ARG=0.01); --otlp-sink runs an OTLP/HTTP
receiver (benchmarks/otlp_sink.py, pinned to wrk's core) that both sides export their traces to.
Only 127.0.0.1 is contacted; every wrk run ends at its deadline.
Prints a Markdown table; writes benchmarks/results/hardening_cost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import body, example, export  # noqa: E402
from run import BIN, RESULTS, binary_body, free_port, metric, modelbay_command, pin, running, wrk  # noqa: E402

BASE = "f1c79e7"
ROWS: dict[str, tuple[str, str]] = {  # row -> (model, door)
    "linear-json": ("linear", "simple"),
    "mlp-binary": ("mlp", "binary"),
    "mlp-oip-json": ("mlp", "oip-json"),
}


@contextlib.contextmanager
def worktrees(commits: dict[str, str]) -> Iterator[dict[str, Path]]:
    """Check out each `commits` value (label -> commit) with `git worktree add --detach` in a
    temporary folder; yield label -> the tree's src/ folder; remove the worktrees on exit."""
    repo = HERE.parent
    folder = Path(tempfile.mkdtemp(prefix="hardening_cost-"))
    trees: dict[str, Path] = {}
    try:
        for label, commit in commits.items():
            tree = folder / label
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), commit],
                check=True,
                capture_output=True,
            )
            trees[label] = tree
        yield {label: tree / "src" for label, tree in trees.items()}
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def imported_from(src: Path) -> str:
    """The file `import modelbay` resolves to with PYTHONPATH=src (this venv's interpreter, as
    the server runs); raises RuntimeError when it is not inside `src` (e.g. the editable install's)."""
    found = subprocess.run(
        [str(BIN / "python"), "-c", "import modelbay; print(modelbay.__file__)"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(src.resolve()):
        raise RuntimeError(f"PYTHONPATH={src} imports modelbay from {found}")
    return found


def commit_of(ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", "--short", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def oip_json_body(model: str, name: str, folder: Path) -> Path:
    """One example as an OIP JSON request (flat FP32 data, as OIP clients send it); its file."""
    x = example(model)
    request = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]
    }
    path = folder / f"{model}.oip.json"
    path.write_text(json.dumps(request))
    return path


def measure(
    src: Path,
    model: str,
    doors: list[str],
    artifact: Path,
    folder: Path,
    args: argparse.Namespace,
    auth: tuple[Path, str] | None = None,
    extra: tuple[list[str], dict[str, str]] = ([], {}),
) -> dict[str, dict[str, float]]:
    """Start the `modelbay serve` of the tree at `src` for `model`; drive each door in turn with
    wrk (a warm-up, then --duration-s); door -> wrk's result. auth: (key file, key): the server
    runs with --auth and every request sends the key. extra: (more serve flags, more variables)."""
    port = free_port()
    flags = serve_flags(args) + (["--auth", str(auth[0])] if auth else []) + extra[0]
    headers = {"Authorization": f"Bearer {auth[1]}"} if auth else None
    command = modelbay_command(artifact, port, "--name", model, *flags)
    base = f"http://127.0.0.1:{port}"
    simple = folder / f"{model}.json"
    results: dict[str, dict[str, float]] = {}
    env = {"PYTHONPATH": str(src), **extra[1]}
    with running(command, env, f"{base}/predict/{model}", simple.read_bytes(), headers):
        for door in doors:
            length: int | None = None
            if door == "simple":
                url, payload = f"{base}/predict/{model}", simple
            elif door == "binary":
                url = f"{base}/v2/models/{model}/infer"
                payload, length = binary_body(model, f"{base}/predict/{model}", folder, headers)
            else:
                url = f"{base}/v2/models/{model}/infer"
                name = httpx.get(f"{base}/v2/models/{model}", headers=headers).json()["inputs"][0]["name"]
                payload = oip_json_body(model, name, folder)
            if args.warmup_s > 0:
                wrk(url, payload, args.warmup_s, args.connections, length, headers=headers)
            before = batches(port, model)
            results[door] = wrk(url, payload, args.duration_s, args.connections, length, headers=headers)
            after = batches(port, model)
            results[door]["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1.0)
    return results


@contextlib.contextmanager
def otlp_sink() -> Iterator[dict[str, str]]:
    """Run benchmarks/otlp_sink.py on wrk's core; yield the variables that send traces to it."""
    port = free_port()
    process = subprocess.Popen([*pin(1), sys.executable, str(HERE / "otlp_sink.py"), str(port)])
    try:
        yield {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def api_key(src: Path, folder: Path) -> tuple[Path, str]:
    """A key file in `folder` with one infer key, made by the `modelbay keys create` of the tree at
    `src`; (the file, the key)."""
    path = folder / "keys.yaml"
    made = subprocess.run(
        [str(BIN / "modelbay"), "keys", "create", "--scope", "infer", "--name", "bench", "--file", str(path)],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    return path, made.stdout.strip()


def serve_flags(args: argparse.Namespace) -> list[str]:
    """Batching as run.py sets it for 64 connections: max batch 64, --max-queue-delay-ms (5)."""
    return ["--max-batch-size", "64", "--max-queue-delay-ms", f"{args.max_queue_delay_ms:g}"]


def batches(port: int, model: str) -> tuple[float, float]:
    """(rows, batches) the server on `port` has run for `model` so far (modelbay_batch_size)."""
    return (
        metric(port, "modelbay_batch_size_sum", model=model),
        metric(port, "modelbay_batch_size_count", model=model),
    )


def summary(runs: list[dict], rows: list[str]) -> list[dict]:
    """Per row: each side's best round (its req/s, p99 and mean batch), head/base of those, and
    every round's head/base req/s ratio (rounds pair a base and a head run made back to back)."""
    out = []
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        best = {
            side: max((r for r in mine if r["side"] == side), key=lambda r: r["rps"])
            for side in ("base", "head")
        }
        by_round: dict[int, dict[str, float]] = {}
        for r in mine:
            by_round.setdefault(r["round"], {})[r["side"]] = r["rps"]
        out.append(
            {
                "row": row,
                "base_rps": best["base"]["rps"],
                "head_rps": best["head"]["rps"],
                "base_p99_ms": best["base"]["p99_ms"],
                "head_p99_ms": best["head"]["p99_ms"],
                "rps_ratio": best["head"]["rps"] / best["base"]["rps"],
                "p99_ratio": best["head"]["p99_ms"] / best["base"]["p99_ms"],
                "base_mean_batch": best["base"]["mean_batch"],
                "head_mean_batch": best["head"]["mean_batch"],
                "round_ratios": [
                    pair["head"] / pair["base"] for _, pair in sorted(by_round.items()) if pair["base"]
                ],
                "errors": sum(int(r["errors"]) for r in mine),
            }
        )
    return out


def table(rows: list[dict], base: str, head: str) -> str:
    head_cells = [
        "row",
        f"base {base} req/s",
        f"head {head} req/s",
        "head/base req/s",
        "base p99 ms",
        "head p99 ms",
        "head/base p99",
        "head/base req/s per round",
        "mean batch base, head",
        "errors",
    ]
    lines = ["| " + " | ".join(head_cells) + " |", "|" + "---|" * len(head_cells)]
    for r in rows:
        cells = [
            r["row"],
            f"{r['base_rps']:.0f}",
            f"{r['head_rps']:.0f}",
            f"{r['rps_ratio']:.3f}",
            f"{r['base_p99_ms']:.2f}",
            f"{r['head_p99_ms']:.2f}",
            f"{r['p99_ratio']:.2f}",
            ", ".join(f"{ratio:.3f}" for ratio in r["round_ratios"]),
            f"{r['base_mean_batch']:.1f}, {r['head_mean_batch']:.1f}",
            str(r["errors"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--base", default=BASE, help="commit before the hardening (default %(default)s)")
    parser.add_argument("--head", default="HEAD", help="commit with it (default %(default)s)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="wrk run per row, side, round")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="wrk warm-up before each run")
    parser.add_argument("--rounds", type=int, default=3, help="base/head pairs per row (order swapped)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--max-queue-delay-ms", type=float, default=5.0, help="both servers' (default: run.py's 5)"
    )
    parser.add_argument(
        "--head-auth", action="store_true", help="the head server with --auth, its requests with a key"
    )
    parser.add_argument("--base-flags", default="", help="more `modelbay serve` flags for base")
    parser.add_argument("--head-flags", default="", help="more `modelbay serve` flags for head")
    parser.add_argument(
        "--head-env", action="append", default=[], metavar="VAR=VALUE", help="a variable for head's server"
    )
    parser.add_argument("--otlp-sink", action="store_true", help="an OTLP/HTTP receiver for both sides")
    parser.add_argument("--out", type=Path, default=RESULTS / "hardening_cost.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    commits = {"base": commit_of(args.base), "head": commit_of(args.head)}
    models = list(dict.fromkeys(ROWS[row][0] for row in args.rows))
    runs: list[dict] = []
    started = time.monotonic()
    sink = otlp_sink() if args.otlp_sink else contextlib.nullcontext({})
    head_env = dict(item.split("=", 1) for item in args.head_env)
    with tempfile.TemporaryDirectory() as tmp, worktrees(commits) as sources, sink as sink_env:
        extra = {
            "base": (shlex.split(args.base_flags), dict(sink_env)),
            "head": (shlex.split(args.head_flags), {**sink_env, **head_env}),
        }
        folder = Path(tmp)
        imports = {side: imported_from(src) for side, src in sources.items()}
        for side, path in imports.items():
            print(f"{side} {commits[side]}: modelbay from {path}", file=sys.stderr)
        auth = {"head": api_key(sources["head"], folder)} if args.head_auth else {}
        artifacts = {}
        for model in models:
            (folder / f"{model}.json").write_bytes(body(model))
            artifacts[model] = export(model, folder)
        for round_ in range(args.rounds):
            order = ("base", "head") if round_ % 2 == 0 else ("head", "base")
            for model in models:
                doors = {ROWS[row][1]: row for row in args.rows if ROWS[row][0] == model}
                for side in order:
                    results = measure(
                        sources[side],
                        model,
                        list(doors),
                        artifacts[model],
                        folder,
                        args,
                        auth.get(side),
                        extra[side],
                    )
                    for door, result in results.items():
                        runs.append({"row": doors[door], "side": side, "round": round_, **result})
                        print(
                            f"round {round_} {side} {doors[door]:13} {result['rps']:8.0f} req/s  "
                            f"p99 {result['p99_ms']:.2f} ms  mean batch {result['mean_batch']:.1f}  "
                            f"errors {result['errors']}",
                            file=sys.stderr,
                        )
    rows = summary(runs, args.rows)
    print(table(rows, commits["base"], commits["head"]))
    print(f"\n({time.monotonic() - started:.0f} s)", file=sys.stderr)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "base": commits["base"],
                "head": commits["head"],
                "imports": imports,
                "settings": {
                    "duration_s": args.duration_s,
                    "warmup_s": args.warmup_s,
                    "rounds": args.rounds,
                    "connections": args.connections,
                    "serve_flags": serve_flags(args),
                    "head_auth": args.head_auth,
                    "base_flags": args.base_flags,
                    "head_flags": args.head_flags,
                    "head_env": head_env,
                    "otlp_sink": args.otlp_sink,
                },
                "summary": rows,
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
