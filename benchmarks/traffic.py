"""Traffic policies on a real server: how closely a 90/10 split is kept, and what a shadow at 100%
does to the served latency.

    python benchmarks/traffic.py                          # 10,000 requests, then 2 x 3 rounds (~4 min)
    python benchmarks/traffic.py --seconds 5 --rounds 1   # a quick look

`modelbay serve REPOSITORY --max-batch-size 16 --max-queue-delay-ms 5` (gRPC off, pinned to core 0)
serves a temporary model repository of benchmarks/models.py's `linear` (Linear 64->10), `mlp`
(1024 -> 4096 -> 4096 -> 1000: 84 MB of weights, memory-bound) and `conv` (a small conv net on
3x64x64: compute-bound), each as versions 1 and 2 saved with torch.export; linear/2 holds other
weights than linear/1 (so an answer says which one computed it), mlp/2 and conv/2 the same
weights as their version 1 (a re-export: a shadow that should agree). This process runs on core 1:

1. split: POST {"split": {"1": 90, "2": 10}} to /v2/repository/models/linear/traffic, then
   `--requests` unversioned OIP JSON inferences of linear over 16 closed-loop keep-alive
   connections. Each answer's x-model-version is counted (and checked against its model_version,
   its outputs against that version's weights, and the totals against the server's
   modelbay_requests_total by version). Target: version 2's share within one percentage point
   of 10%.
2. shadow, for each of `--models` (mlp, conv): an open-loop load of Poisson arrivals (seeded) at
   `--load` times the model's capacity (measured first: 16 closed-loop connections for 3 s) on
   its unversioned /v2/models/M/infer, in phases of `--seconds` that alternate (a)
   {"split": {"1": 100}} and (b) the same with {"shadow": {"version": "2", "percent": 100}}. A
   request's latency runs from the moment it was due to be sent (no coordinated omission; this
   client's garbage collector is off during a phase, so its own pauses are not counted). Per
   phase: requests, failed, p50/p99, the server's shadow counts (calls answered, skipped, failed;
   agreement) and each version's mean forward pass (modelbay_inference_duration_seconds).
   Target: the served p99 with the shadow within 10% of the p99 without it, pooled over the
   rounds (each round's ratio is listed too).
3. caches: after the server stopped, each model's forward pass in this process (2 rows, one
   thread) alone, and with another copy's pass between two of its own: what a shadow version
   costs the served one through the memory hierarchy, which no CPU priority can give back.

Only 127.0.0.1 is contacted; every phase ends at its deadline; the server is stopped by PID.
Writes benchmarks/results/traffic.json; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reliability"))
from models import MODELS, example  # noqa: E402
from run import RESULTS, free_port, metric, modelbay_command, running  # noqa: E402
from serving import Outcome, Send, closed_loop, counts, one, percentile_ms  # noqa: E402

FLAGS = ("--max-batch-size", "16", "--max-queue-delay-ms", "5")
SPLIT = {"1": 90, "2": 10}
# Version 1 answers every call in both phases (the highest, 2, would be the default); (b) adds the shadow.
WITHOUT = {"split": {"1": 100}}
WITH = {**WITHOUT, "shadow": {"version": "2", "percent": 100}}
SEEDS = {"linear": (0, 1), "mlp": (0, 0), "conv": (0, 0)}  # the weights' seed of versions 1 and 2
SHADOWED = ("mlp", "conv")  # part 2's models: memory-bound (84 MB of weights), compute-bound (0.2 MB)


def save_repository(root: Path) -> dict[str, dict]:
    """The repository's two models, two versions each (torch.export, dynamic batch). Returns per
    model its input name, the OIP JSON body of its example and each version's output for it."""
    made: dict[str, dict] = {}
    for name, seeds in SEEDS.items():
        factory, _ = MODELS[name]
        x = example(name)
        outputs = {}
        for version, seed in enumerate(seeds, start=1):
            torch.manual_seed(seed)
            module = factory().eval()
            program = torch.export.export(
                module, (x.repeat(2, *[1] * (x.dim() - 1)),), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
            folder = root / name / str(version)
            folder.mkdir(parents=True)
            torch.export.save(program, folder / "model.pt2")
            with torch.inference_mode():
                outputs[str(version)] = module(x).numpy().reshape(-1)
            input_name = program.graph_signature.user_inputs[0]
        tensor = {
            "name": input_name,
            "shape": list(x.shape),
            "datatype": "FP32",
            "data": x.flatten().tolist(),
        }
        made[name] = {"body": json.dumps({"inputs": [tensor]}).encode(), "outputs": outputs}
    return made


def set_traffic(url: str, model: str, policy: dict | None) -> dict:
    reply = httpx.post(
        f"{url}/v2/repository/models/{model}/traffic",
        content=json.dumps(policy).encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    reply.raise_for_status()
    return dict(reply.json())


def measure_split(url: str, port: int, made: dict, requests: int) -> dict:
    """Part 1: `requests` unversioned calls to linear under the 90/10 split."""
    state = set_traffic(url, "linear", {"split": SPLIT})
    seen: collections.Counter[str] = collections.Counter()
    wrong = 0
    body, outputs = made["linear"]["body"], made["linear"]["outputs"]

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        nonlocal wrong
        reply = await client.post(
            "/v2/models/linear/infer", content=body, headers={"content-type": "application/json"}
        )
        if reply.status_code == 200:
            version = reply.headers["x-model-version"]
            answer = reply.json()
            got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
            wrong += answer["model_version"] != version or not np.allclose(got, outputs[version], atol=1e-5)
            seen[version] += 1
        return reply

    start = time.monotonic()
    outcomes = asyncio.run(counted_loop(url, send, 16, requests))
    elapsed = time.monotonic() - start
    answered = sum(seen.values())
    server = {
        v: metric(port, "modelbay_requests_total", model="linear", version=v, door="infer") for v in SPLIT
    }
    set_traffic(url, "linear", None)
    return {
        "policy": {"split": SPLIT},
        "serving": state["serving"],
        "requests": len(outcomes),
        "answered": answered,
        "failed": len(outcomes) - counts(outcomes)["200"],
        "by_version": dict(seen),
        "share_of_2_percent": round(100 * seen["2"] / answered, 3),
        "off_by_points": round(abs(100 * seen["2"] / answered - SPLIT["2"]), 3),
        "answers_not_of_their_version": wrong,
        "server_counts": server,
        "server_agrees": all(server[v] == seen[v] for v in SPLIT),
        "seconds": round(elapsed, 1),
    }


async def counted_loop(
    url: str, send: Send, connections: int, total: int, limit_s: float = 600.0
) -> list[Outcome]:
    """`connections` closed-loop clients sending `total` requests between them (or for `limit_s`)."""
    outcomes: list[Outcome] = []
    taken = 0
    start = time.monotonic()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal taken
            while taken < total and (sent := time.monotonic()) - start < limit_s:
                taken += 1
                outcomes.append(await one(client, send, taken, start, sent))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return outcomes


async def open_loop(
    url: str, path: str, body: bytes, rate: float, duration_s: float, rng: random.Random
) -> list[Outcome]:
    """Poisson arrivals at `rate` per second for `duration_s`, each request timed from when it was due."""
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        start = time.monotonic()

        async def one(due: float) -> None:
            try:
                label = str((await client.post(path, content=body, headers=headers)).status_code)
            except httpx.HTTPError as exc:
                label = type(exc).__name__
            outcomes.append(Outcome(label, due - start, time.monotonic() - due))

        tasks = []
        due = start
        while (due := due + rng.expovariate(rate)) < start + duration_s:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    return outcomes


def shadow_counts(port: int, model: str) -> dict[str, float]:
    """The server's shadow counters for `model`/2, and each version's forward passes (count, seconds)."""
    labels = {"model": model, "version": "2"}
    counters = {
        "answered": metric(port, "modelbay_shadow_requests_total", status="success", **labels),
        "all": metric(port, "modelbay_shadow_requests_total", **labels),
        "skipped": metric(port, "modelbay_shadow_requests_total", status="skipped", **labels),
        "agree": metric(port, "modelbay_shadow_agreement_total", result="agree", **labels),
        "disagree": metric(port, "modelbay_shadow_agreement_total", result="disagree", **labels),
    }
    for version in ("1", "2"):
        for part in ("count", "sum"):
            name = f"modelbay_inference_duration_seconds_{part}"
            counters[f"batch_{part}_{version}"] = metric(port, name, model=model, version=version)
    return counters


def batch_ms(before: dict[str, float], after: dict[str, float], version: str) -> float | None:
    """The mean forward pass (batch) time of `version` between two shadow_counts, in ms."""
    batches = after[f"batch_count_{version}"] - before[f"batch_count_{version}"]
    seconds = after[f"batch_sum_{version}"] - before[f"batch_sum_{version}"]
    return round(1000 * seconds / batches, 2) if batches else None


def interference(name: str, rounds: int = 200) -> dict[str, float]:
    """Model `name`'s forward pass (2 rows, one thread, in this process): median ms alone, and
    with another copy of it run between two of its passes, as a shadow version's batch comes
    between the served one's (the other's weights push the first's out of the caches)."""
    factory, _ = MODELS[name]
    torch.set_num_threads(1)
    first, second = factory().eval(), factory().eval()
    x = example(name)
    x = x.repeat(2, *[1] * (x.dim() - 1))
    out = {}
    with torch.inference_mode():
        for _ in range(10):
            first(x), second(x)
        for key, between in (("alone", None), ("with_another_model", second)):
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                first(x)
                times.append(time.perf_counter() - start)
                if between is not None:
                    between(x)
            out[key] = round(1000 * float(np.median(times)), 2)
    return out


def settle(port: int, model: str) -> dict[str, float]:
    """The shadow counts once they stop changing (the last shadow calls finished)."""
    last = shadow_counts(port, model)
    while True:
        time.sleep(0.5)
        now = shadow_counts(port, model)
        if now == last:
            return now
        last = now


def measure_shadow(url: str, port: int, model: str, body: bytes, args: argparse.Namespace) -> dict:
    """Part 2 for `model`: alternating phases without and with a shadow at 100%, at a fixed
    offered load."""
    path = f"/v2/models/{model}/infer"

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        return await client.post(path, content=body, headers={"content-type": "application/json"})

    asyncio.run(closed_loop(url, send, 16, 2.0))  # warm-up
    capacity_outcomes = asyncio.run(closed_loop(url, send, 16, 3.0))
    capacity = counts(capacity_outcomes)["200"] / 3.0
    rate = args.load * capacity
    rng = random.Random(11)
    phases, pooled = [], {"a": [], "b": []}
    for _ in range(args.rounds):
        for kind, policy in (("a", WITHOUT), ("b", WITH)):
            set_traffic(url, model, policy)
            before = settle(port, model)
            gc.collect()
            gc.disable()  # a full collection in this client (torch imported) stalls every request in flight
            try:
                outcomes = asyncio.run(open_loop(url, path, body, rate, args.seconds, rng))
            finally:
                gc.enable()
            after = settle(port, model)
            shadow = {key: int(after[key] - before[key]) for key in after if not key.startswith("batch_")}
            pooled[kind] += outcomes
            phases.append(
                {
                    "kind": kind,
                    "requests": len(outcomes),
                    "failed": len(outcomes) - counts(outcomes)["200"],
                    "p50_ms": percentile_ms(outcomes, 50),
                    "p99_ms": percentile_ms(outcomes, 99),
                    "shadow": shadow,
                    "served_batch_ms": batch_ms(before, after, "1"),
                    "shadow_batch_ms": batch_ms(before, after, "2"),
                }
            )
            print(
                f"{model} phase {len(phases)} ({kind}): p99 {phases[-1]['p99_ms']:.1f} ms, shadow {shadow}",
                file=sys.stderr,
            )
    set_traffic(url, model, None)
    pairs = list(zip(phases[::2], phases[1::2], strict=True))
    p99 = {kind: percentile_ms(outcomes, 99) for kind, outcomes in pooled.items()}
    return {
        "capacity_rps": round(capacity, 1),
        "load": args.load,
        "rate_rps": round(rate, 1),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "phases": phases,
        "p50_ms": {kind: percentile_ms(outcomes, 50) for kind, outcomes in pooled.items()},
        "p99_ms": p99,
        "p99_ratio": round(p99["b"] / p99["a"], 3),
        "p99_ratio_per_round": [round(b["p99_ms"] / a["p99_ms"], 3) for a, b in pairs],
    }


def tables(split: dict, shadows: dict[str, dict], caches: dict[str, dict[str, float]]) -> str:
    by_version = split["by_version"]
    lines = [
        "| requests | answered by 1 | answered by 2 | version 2's share | off by | failed |",
        "|---|---|---|---|---|---|",
        f"| {split['requests']:,} | {by_version.get('1', 0):,} | {by_version.get('2', 0):,} "
        f"| {split['share_of_2_percent']:.2f}% | {split['off_by_points']:.2f} points | {split['failed']} |",
    ]
    for model, shadow in shadows.items():
        lines += [
            "",
            f"{model}: {shadow['rate_rps']} requests/s offered ({shadow['load']:.0%} of "
            f"{shadow['capacity_rps']} measured); its forward pass alone {caches[model]['alone']} ms, "
            f"{caches[model]['with_another_model']} ms with another copy's between two of its own",
            "",
            "| phase | shadow | requests | failed | p50 ms | p99 ms | p99 with / without | served batch ms "
            "| shadow calls answered | skipped | agree |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for number, phase in enumerate(shadow["phases"], 1):
            with_shadow = phase["kind"] == "b"
            ratio = f"{shadow['p99_ratio_per_round'][(number - 1) // 2]:.2f}x" if with_shadow else ""
            s = phase["shadow"]
            lines.append(
                f"| {number} | {'100%' if with_shadow else 'none'} | {phase['requests']} | {phase['failed']} "
                f"| {phase['p50_ms']:.1f} | {phase['p99_ms']:.1f} | {ratio} | {phase['served_batch_ms']} "
                f"| {s['answered'] if with_shadow else ''} | {s['skipped'] if with_shadow else ''} "
                f"| {s['agree'] if with_shadow else ''} |"
            )
        for kind, name in (("a", "all without"), ("b", "all with")):
            ratio = f"**{shadow['p99_ratio']:.2f}x**" if kind == "b" else ""
            lines.append(
                f"| {name} | | | | {shadow['p50_ms'][kind]:.1f} | {shadow['p99_ms'][kind]:.1f} | {ratio} "
                "| | | | |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="split: unversioned requests sent")
    parser.add_argument("--seconds", type=float, default=15.0, help="shadow: length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="shadow: (without, with) pairs, alternated")
    parser.add_argument(
        "--load", type=float, default=0.3, help="shadow: offered load, a fraction of capacity"
    )
    parser.add_argument(
        "--models", nargs="+", choices=SHADOWED, default=list(SHADOWED), help="shadow: the models measured"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "traffic.json")
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the server runs on core 0 (run.running pins it there)
    with tempfile.TemporaryDirectory(prefix="modelbay-traffic-") as tmp:
        repository = Path(tmp) / "models"
        made = save_repository(repository)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running(
            modelbay_command(repository, port, *FLAGS), {}, f"{url}/v2/models/mlp/infer", made["mlp"]["body"]
        ):
            split = measure_split(url, port, made, args.requests)
            print(f"split: version 2 answered {split['share_of_2_percent']:.2f}%", file=sys.stderr)
            shadows = {
                model: measure_shadow(url, port, model, made[model]["body"], args) for model in args.models
            }
    caches = {model: interference(model) for model in args.models}  # the server has stopped
    result = {"server_flags": list(FLAGS), "split": split, "shadow": shadows, "forward_ms": caches}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(tables(split, shadows, caches))


if __name__ == "__main__":
    main()
