"""Zero-downtime version swaps: the same steady load with and without model versions replaced under it.

    python benchmarks/swap.py                          # 20 s phases, a b a b (~2 min)
    python benchmarks/swap.py --seconds 5 --rounds 1   # a quick look

`modelbay serve REPOSITORY --max-batch-size 16 --max-queue-delay-ms 5` (gRPC off, pinned to core 0)
serves a temporary model repository holding the benchmark MLP (benchmarks/models.py, saved with
torch.export) as mlp/1/model.pt2. This process, pinned to core 1, runs `--connections` closed-loop
clients (benchmarks/reliability/serving.py's load, httpx on keep-alive connections) that POST one
OIP JSON inference request, the MLP's example, to the unversioned /v2/models/mlp/infer. Phases of
`--seconds` alternate: (a) nothing else happens; (b) ten swaps, one every `--seconds`/10 s: each
copies the next version folder (k+1) into the repository, removes folder k and POSTs
/v2/repository/models/mlp/load, and the next swap waits for that call to return. Odd versions hold
the seed-0 weights, even ones retrained (seed-1) weights, so every answer's outputs are checked
against the weights of the model_version it names.

Per request: status, latency and model_version. Per phase: requests, failed (anything but 200; the
target is 0), requests/s, p50/p99; per round the ratio p99(b)/p99(a). Also: the versions in the
order they answered, whether any request sent after a swap returned was answered by an older
version, what the repository index says after each swap, and the server's resident memory.
Latencies are those of one Python client driving many connections, so they include its own
queueing: compare the phases of one run, not numbers across runs.
Only 127.0.0.1 is contacted; every phase ends at its deadline; the server is stopped by PID.
Writes benchmarks/results/swap.json; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reliability"))
from models import MODELS, example  # noqa: E402
from run import RESULTS, free_port, modelbay_command, running  # noqa: E402
from serving import Outcome, closed_loop, counts, percentile_ms, rss_mib  # noqa: E402

MODEL = "mlp"
SWAPS_PER_PHASE = 10
FLAGS = ("--max-batch-size", "16", "--max-queue-delay-ms", "5")
SEEDS = (0, 1)  # version v holds the weights of seed SEEDS[(v - 1) % 2]: odd original, even retrained


@dataclass(frozen=True)
class Answer:
    """One request: its outcome (label, sent, latency; serving.Outcome), the model_version that
    answered (None without a 200), whether its outputs are those of that version's weights, and
    when it was sent and answered (time.monotonic(), seconds)."""

    outcome: Outcome
    version: int | None
    outputs_match: bool
    sent: float
    done: float


@dataclass
class Swap:
    """One version swap: the version it brought in, when it began (the copy), when its load call
    was sent and when it returned (time.monotonic()), the call's status and what the repository
    index said afterwards."""

    version: int
    began: float
    called: float = 0.0
    returned: float = 0.0
    status: int = 0
    detail: str = ""
    index: list[dict] = field(default_factory=list)


def save_versions(folder: Path) -> tuple[dict[int, tuple[Path, np.ndarray]], str]:
    """The MLP saved as models.export does (torch.export, dynamic batch) once per seed of SEEDS,
    as folder/seed<S>/model.pt2. Returns, by seed, (that version folder, its output for the
    example, [1, 1000] FP32), and the name of the model's input (what modelbay's loader calls it:
    the exported program's first user input)."""
    factory, _ = MODELS[MODEL]
    x = example(MODEL)
    saved = {}
    name = ""
    for seed in SEEDS:
        torch.manual_seed(seed)
        module = factory().eval()
        program = torch.export.export(
            module, (x.repeat(2, 1),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        version_folder = folder / f"seed{seed}"
        version_folder.mkdir()
        torch.export.save(program, version_folder / "model.pt2")
        name = program.graph_signature.user_inputs[0]
        with torch.inference_mode():
            saved[seed] = (version_folder, module(x).numpy())
    return saved, name


def weights_of(version: int) -> int:
    """The seed of the weights model version `version` holds."""
    return SEEDS[(version - 1) % len(SEEDS)]


class Load:
    """The closed-loop clients' request and what they saw: one Answer per request."""

    def __init__(self, url: str, body: bytes, expected: dict[int, np.ndarray]) -> None:
        self.url = url
        self.body = body
        self.expected = expected
        self.answers: list[Answer] = []
        self.start = time.monotonic()
        self.bodies_of_failures: list[str] = []

    async def send(self, client: httpx.AsyncClient, index: int) -> httpx.Response:
        """serving.closed_loop's request: POST the body, record the Answer (failures too)."""
        sent = time.monotonic()
        try:
            response = await client.post(
                f"/v2/models/{MODEL}/infer", content=self.body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            done = time.monotonic()
            self.answers.append(
                Answer(Outcome(type(exc).__name__, sent - self.start, done - sent), None, False, sent, done)
            )
            raise
        done = time.monotonic()
        version, matches = None, False
        if response.status_code == 200:
            reply = response.json()
            version = int(reply["model_version"])
            got = np.asarray(reply["outputs"][0]["data"], dtype=np.float32)
            want = self.expected[weights_of(version)].reshape(-1)
            matches = got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-3, atol=1e-5))
        elif len(self.bodies_of_failures) < 20:
            self.bodies_of_failures.append(f"{response.status_code}: {response.text[:300]}")
        label = str(response.status_code)
        self.answers.append(
            Answer(Outcome(label, sent - self.start, done - sent), version, matches, sent, done)
        )
        return response


async def swaps(
    url: str, repository: Path, saved: dict[int, tuple[Path, np.ndarray]], first: int, phase_s: float
) -> list[Swap]:
    """SWAPS_PER_PHASE swaps, from version `first` on, one every phase_s / SWAPS_PER_PHASE seconds
    (or at once when the last took longer): copy folder first+1 in, remove folder `first`, load."""
    done: list[Swap] = []
    start = time.monotonic()
    folder = repository / MODEL
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for i in range(SWAPS_PER_PHASE):
            await asyncio.sleep(max(0.0, start + (i + 0.5) * phase_s / SWAPS_PER_PHASE - time.monotonic()))
            old, new = first + i, first + i + 1
            swap = Swap(new, time.monotonic())
            await asyncio.to_thread(shutil.copytree, saved[weights_of(new)][0], folder / str(new))
            await asyncio.to_thread(shutil.rmtree, folder / str(old))
            swap.called = time.monotonic()
            reply = await client.post(f"/v2/repository/models/{MODEL}/load")
            swap.returned, swap.status = time.monotonic(), reply.status_code
            swap.detail = "" if reply.status_code == 200 else reply.text[:300]
            rows = (await client.post("/v2/repository/index")).json()
            # the two versions swapped, and any other not unloaded (each unloaded one stays listed)
            swap.index = [
                r for r in rows if r["version"] in (str(old), str(new)) or r["state"] != "UNAVAILABLE"
            ]
            done.append(swap)
    return done


async def phase(
    load: Load, swapping: bool, args: argparse.Namespace, state: dict
) -> tuple[dict, list[Outcome]]:
    """One phase of `args.seconds`: the closed loop, with swaps when `swapping`; its summary and
    its requests' outcomes."""
    before = len(load.answers)
    start = time.monotonic()
    rss_before = rss_mib(state["pid"])
    loop = closed_loop(load.url, load.send, args.connections, args.seconds)
    if swapping:
        swapper = swaps(load.url, state["repository"], state["saved"], state["version"], args.seconds)
        _, done = await asyncio.gather(loop, swapper)
        state["version"] += len(done)
    else:
        await loop
        done = []
    elapsed = time.monotonic() - start
    answers = load.answers[before:]
    outcomes = [answer.outcome for answer in answers]
    seen = counts(outcomes)
    summary = {
        "kind": "b" if swapping else "a",
        "seconds": round(elapsed, 2),
        "requests": len(answers),
        "failed": len(answers) - seen["200"],
        "labels": dict(seen),
        "rps": seen["200"] / args.seconds,
        "p50_ms": percentile_ms(outcomes, 50),
        "p99_ms": percentile_ms(outcomes, 99),
        "outputs_mismatched": sum(1 for a in answers if a.version is not None and not a.outputs_match),
        "versions_in_order": runs(answers),
        **ordering(answers, done),
        "swaps": [
            {
                **asdict(s),
                "began": round(s.began - start, 3),
                "called": round(s.called - start, 3),
                "returned": round(s.returned - start, 3),
                "swap_s": round(s.returned - s.began, 3),
                "load_call_s": round(s.returned - s.called, 3),
            }
            for s in done
        ],
        "swaps_late": sum(1 for s in done if s.returned > start + args.seconds),
        "rss_mib": [round(rss_before, 1), round(rss_mib(state["pid"]), 1)],
        "loadavg_1m": os.getloadavg()[0],
    }
    return summary, outcomes


def runs(answers: list[Answer]) -> list[list[int]]:
    """The versions that answered, in the order the answers came, as [version, answers in a row]."""
    out: list[list[int]] = []
    for answer in sorted(answers, key=lambda a: a.done):
        if answer.version is None:
            continue
        if out and out[-1][0] == answer.version:
            out[-1][1] += 1
        else:
            out.append([answer.version, 1])
    return out


def ordering(answers: list[Answer], done: list[Swap]) -> dict:
    """Did versions go backwards, and what did the swaps cost?

    stale_after_swap: requests sent after the swap to version v returned but answered by a version
                      below v (the swap's promise broken; the target is 0).
    drain_answers:    answers from the outgoing version after the incoming one's first answer:
                      requests it had been given before the switch, finished on it (by design).
    drain_ms:         per swap, the last such answer's time after the new version's first, in ms.
    index_ok:         after every swap the index had the new version READY, the old one unloaded
                      (UNAVAILABLE) and no other version READY.
    p99_in_swap_ms / p99_out_of_swap_ms: p99 of the requests that overlapped a swap (its copy,
                      removal and load call), and of the others (a phase without swaps has only
                      the latter).
    """
    stale = drained = 0
    drain_ms = []
    for swap in done:
        stale += sum(
            1
            for a in answers
            if a.version is not None and a.sent >= swap.returned and a.version < swap.version
        )
        first_new = min((a.done for a in answers if a.version == swap.version), default=float("inf"))
        tail = [a.done for a in answers if a.version == swap.version - 1 and a.done > first_new]
        drained += len(tail)
        drain_ms.append(round((max(tail) - first_new) * 1000, 1) if tail else 0.0)
    index_ok = all(
        {(row["version"], row["state"]) for row in swap.index}
        >= {(str(swap.version), "READY"), (str(swap.version - 1), "UNAVAILABLE")}
        and not any(row["state"] == "READY" and row["version"] != str(swap.version) for row in swap.index)
        for swap in done
    )
    overlaps = [any(a.sent < s.returned and a.done > s.began for s in done) for a in answers]
    inside = [a.outcome for a, hit in zip(answers, overlaps, strict=True) if hit]
    outside = [a.outcome for a, hit in zip(answers, overlaps, strict=True) if not hit]
    return {
        "stale_after_swap": stale,
        "drain_answers": drained,
        "drain_ms": drain_ms,
        "index_ok": index_ok,
        "requests_in_swap": len(inside),
        "p99_in_swap_ms": percentile_ms(inside, 99),
        "p99_out_of_swap_ms": percentile_ms(outside, 99),
    }


def server_pid() -> int:
    """The PID of `modelbay serve` started by run.running: this process's only child (taskset
    execs it in place), read from /proc."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one child process (the server), found {children}")
    return int(children[0])


def table(phases: list[dict], pooled: dict) -> str:
    """Markdown: one row per phase (the p99 ratio of each (a, b) pair on its b row), then one per
    kind of phase with every one of its requests pooled."""
    head = [
        "phase",
        "swaps",
        "requests",
        "failed",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99 b/a",
        "p99 overlapping a swap ms",
        "stale",
        "versions answering",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    last_a = float("nan")
    for number, p in enumerate(phases, 1):
        ratio = ""
        if p["kind"] == "a":
            last_a = p["p99_ms"]
        else:
            ratio = f"{p['p99_ms'] / last_a:.2f}x"
        order = p["versions_in_order"] or [["none"]]
        first, last = order[0][0], order[-1][0]
        cells = [
            f"{number} {p['kind']}",
            str(len(p["swaps"])),
            str(p["requests"]),
            str(p["failed"]),
            f"{p['rps']:.0f}",
            f"{p['p50_ms']:.1f}",
            f"{p['p99_ms']:.1f}",
            ratio,
            f"{p['p99_in_swap_ms']:.1f}" if p["swaps"] else "",
            str(p["stale_after_swap"]),
            f"{first}" if first == last else f"{first} -> {last}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for kind in ("a", "b"):
        k = pooled[kind]
        ratio = f"{pooled['p99_ratio']:.2f}x" if kind == "b" else ""
        cells = [
            f"all {kind}",
            str(k["swaps"]),
            str(k["requests"]),
            str(k["failed"]),
            f"{k['rps']:.0f}",
            f"{k['p50_ms']:.1f}",
            f"{k['p99_ms']:.1f}",
            ratio,
            "",
            str(k["stale_after_swap"]),
            "",
        ]
        lines.append("| " + " | ".join(f"**{c}**" if c else "" for c in cells) + " |")
    return "\n".join(lines)


def pool(phases: list[dict], outcomes: list[list[Outcome]]) -> dict:
    """Per kind of phase, every request of its phases pooled: totals, req/s, p50/p99; the ratio
    p99(b)/p99(a) pooled and per (a, b) pair, and the checks over the whole run."""
    out: dict = {}
    for kind in ("a", "b"):
        mine = [i for i, p in enumerate(phases) if p["kind"] == kind]
        every = [o for i in mine for o in outcomes[i]]
        out[kind] = {
            "phases": len(mine),
            "swaps": sum(len(phases[i]["swaps"]) for i in mine),
            "requests": len(every),
            "failed": sum(phases[i]["failed"] for i in mine),
            "rps": sum(phases[i]["rps"] for i in mine) / len(mine),
            "p50_ms": percentile_ms(every, 50),
            "p99_ms": percentile_ms(every, 99),
            "stale_after_swap": sum(phases[i]["stale_after_swap"] for i in mine),
        }
    pairs = list(zip(phases[::2], phases[1::2], strict=True))
    out["p99_ratio"] = out["b"]["p99_ms"] / out["a"]["p99_ms"]
    out["p99_ratio_per_round"] = [round(b["p99_ms"] / a["p99_ms"], 3) for a, b in pairs]
    out["p50_ratio_per_round"] = [round(b["p50_ms"] / a["p50_ms"], 3) for a, b in pairs]
    out["outputs_mismatched"] = sum(p["outputs_mismatched"] for p in phases)
    out["index_ok"] = all(p["index_ok"] for p in phases)
    out["swaps_not_200"] = sum(1 for p in phases for swap in p["swaps"] if swap["status"] != 200)
    rss = [phases[0]["rss_mib"][0], phases[-1]["rss_mib"][1]]
    out["rss_mib_first_last"] = rss
    out["rss_growth_per_swap_mib"] = round((rss[1] - rss[0]) / max(1, out["b"]["swaps"]), 1)
    return out


def measure(args: argparse.Namespace, folder: Path) -> tuple[list[dict], list[list[Outcome]], list[str]]:
    """Serve the repository made in `folder` and run the phases; each phase's summary and outcomes,
    and the first failed answers' bodies."""
    saved, name = save_versions(folder)
    repository = folder / "models"
    shutil.copytree(saved[weights_of(1)][0], repository / MODEL / "1")
    x = example(MODEL)
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = modelbay_command(repository, port, *FLAGS)
    phases, outcomes = [], []
    with running(command, {}, f"{url}/v2/models/{MODEL}/infer", body):
        load = Load(url, body, {seed: out for seed, (_, out) in saved.items()})
        state = {"pid": server_pid(), "repository": repository, "saved": saved, "version": 1}
        asyncio.run(closed_loop(url, load.send, args.connections, 2.0))  # warm-up
        load.answers.clear()
        for _ in range(args.rounds):
            for swapping in (False, True):
                summary, seen = asyncio.run(phase(load, swapping, args, state))
                phases.append(summary)
                outcomes.append(seen)
                print(
                    f"phase {len(phases)} ({summary['kind']}): {summary['requests']} requests, "
                    f"{summary['failed']} failed, p99 {summary['p99_ms']:.1f} ms",
                    file=sys.stderr,
                )
    return phases, outcomes, load.bodies_of_failures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="(a, b) pairs, alternated in one run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "swap.json")
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the server runs on core 0 (run.running pins it there)
    with tempfile.TemporaryDirectory(prefix="modelbay-swap-") as tmp:
        phases, outcomes, failures = measure(args, Path(tmp))
    pooled = pool(phases, outcomes)
    result = {
        "model": MODEL,
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "server_flags": list(FLAGS),
        "summary": pooled,
        "phases": phases,
        "failure_bodies": failures,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(phases, pooled))
    checks = (
        "outputs_mismatched",
        "index_ok",
        "swaps_not_200",
        "rss_mib_first_last",
        "rss_growth_per_swap_mib",
    )
    print("; ".join(f"{key}: {pooled[key]}" for key in checks))


if __name__ == "__main__":
    main()
