"""`modelbay bench`: sweep concurrency and batching settings against a model, print requests/s,
p50, p99 and errors per point, mark the best setting that meets `--slo-ms`, draw the curve, and
with `--write` put the winner into the model folder's modelbay.yaml (modelbay.bench)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from modelbay.bench import sweep
from modelbay.bench.load import Target
from modelbay.bench.sweep import Point, Setting
from modelbay.errors import ModelbayError, ModelLoadError
from modelbay.settings import MANIFEST_NAME, read_yaml


def add_parser(commands: Any) -> None:
    """Register `modelbay bench`."""
    bench = commands.add_parser(
        "bench",
        help="sweep concurrency and batching settings, pick the best within an SLO",
        description="Measure a model at each batching setting and concurrency (closed loop), print "
        "requests/s, p50, p99 and errors, and mark the best setting whose p99 meets --slo-ms. MODEL is a "
        "model file or folder (served by a modelbay serve started per setting on a free loopback port), "
        "or with --url the name of a model on a running server (its batching changed through the model "
        "repository API: an admin key or a loopback client).",
    )
    bench.add_argument("model", metavar="MODEL", help="model file or folder; with --url, a model name")
    bench.add_argument("--url", help="a running server instead (e.g. http://127.0.0.1:8000)")
    bench.add_argument(
        "--name", help="the model's name when MODEL is a path (default: its file or folder name)"
    )
    bench.add_argument("--slo-ms", type=float, help="p99 latency the chosen setting must meet, in ms")
    bench.add_argument("--concurrency", type=_ints, default=[1, 8, 32, 64], help="connections (1,8,32,64)")
    bench.add_argument("--max-batch-size", type=_ints, default=[8, 32, 64], help="values to try (8,32,64)")
    bench.add_argument("--max-queue-delay-ms", type=_floats, default=[0.0, 5.0], help="values to try (0,5)")
    bench.add_argument(
        "--workers", type=_ints, default=[1], help="server processes to try (1); not with --url"
    )
    bench.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --slo-ms, try adaptive batching",
    )
    bench.add_argument("--duration-s", type=float, default=5.0, help="seconds measured per point (5)")
    bench.add_argument(
        "--processes", type=int, help="load generator processes (default: cores - 1, at least 1)"
    )
    bench.add_argument("--plot", type=Path, help="write the throughput / p99 curves to this PNG (matplotlib)")
    bench.add_argument("--json", type=Path, help="write every point to this JSON file")
    bench.add_argument(
        "--write", action="store_true", help="record the best setting in the folder's modelbay.yaml"
    )


def run(args: argparse.Namespace, api_key: str | None) -> int:
    """Run the sweep; exit status 0, or 2 with one line for a mistake or a server that fails."""
    try:
        return _run(args, api_key)
    except (ModelbayError, ValueError, OSError, httpx.HTTPError) as exc:
        print(f"modelbay bench: {exc.message if isinstance(exc, ModelbayError) else exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, api_key: str | None) -> int:
    folder = _write_folder(args)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if args.url and args.workers != [1]:
        raise ValueError("--workers is a setting of the server: sweep it on a model path, not with --url")
    settings = sweep.grid(
        args.max_batch_size, args.max_queue_delay_ms, args.workers, args.slo_ms if args.adaptive else None
    )
    name = args.model if args.url else (args.name or _default_name(Path(args.model)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = args.processes or max(1, cores - 1)

    @contextlib.contextmanager
    def serving(setting: Setting) -> Iterator[Target]:
        if args.url:
            sweep.reconfigure(args.url, name, setting, headers)
            yield _target(args.url, name, headers)
        else:
            with sweep.started(args.model, name, setting) as url:
                yield _target(url, name, headers)

    points = _measure(settings, args, serving, processes)
    chosen = sweep.best(points, args.slo_ms)
    print(_report(points, chosen, args.slo_ms))
    if args.json:
        args.json.write_text(json.dumps([_row(p, p is chosen) for p in points], indent=2))
    if args.plot:
        _plot(points, args.slo_ms, args.plot)
    if chosen is None:
        print("modelbay bench: no setting met the SLO without errors; nothing recorded", file=sys.stderr)
        return 1
    if folder is not None:
        _record(folder, chosen)
    return 0


def _measure(settings: list[Setting], args: argparse.Namespace, serving: Any, processes: int) -> list[Point]:
    from rich.progress import Progress

    total = len(settings) * len(args.concurrency)
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"{total} points, {args.duration_s:g} s each", total=total)

        def advance(point: Point) -> None:
            measured = point.measured
            progress.update(
                task,
                advance=1,
                description=f"{point.setting.label} @ {measured.concurrency}: {measured.rps:.0f} req/s",
            )

        return sweep.run(settings, args.concurrency, serving, args.duration_s, processes, advance)


def _target(url: str, model: str, headers: dict[str, str]) -> Target:
    body = sweep.example_body(url, model, headers)
    return Target.of(f"{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json", **headers})


def _report(points: list[Point], chosen: Point | None, slo_ms: float | None) -> str:
    lines = [f"{'setting':52} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for point in points:
        m = point.measured
        mark = (
            "  <- best"
            if point is chosen
            else ("" if slo_ms is None or m.p99_ms <= slo_ms else "  (over SLO)")
        )
        lines.append(
            f"{point.setting.label:52} {m.concurrency:5d} {m.rps:9.0f} {m.p50_ms:8.2f} "
            f"{m.p99_ms:8.2f} {m.errors:6d}{mark}"
        )
    if chosen is not None:
        within = f" within the {slo_ms:g} ms SLO" if slo_ms is not None else ""
        lines.append(
            f"best{within}: {chosen.setting.label}, {chosen.measured.rps:.0f} req/s at concurrency "
            f"{chosen.measured.concurrency} (p99 {chosen.measured.p99_ms:.2f} ms)"
        )
    return "\n".join(lines)


def _row(point: Point, chosen: bool) -> dict[str, Any]:
    m = point.measured
    return {
        "setting": point.setting.label,
        "batching": point.setting.batching(),
        "workers": point.setting.workers,
        "concurrency": m.concurrency,
        "rps": m.rps,
        "p50_ms": m.p50_ms,
        "p99_ms": m.p99_ms,
        "errors": m.errors,
        "requests": m.requests,
        "best": chosen,
    }


def _plot(points: list[Point], slo_ms: float | None, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ModelLoadError("--plot needs matplotlib: pip install 'modelbay[bench]'") from exc
    figure, axes = plt.subplots(figsize=(8, 5))
    for setting in dict.fromkeys(point.setting for point in points):
        mine = [p.measured for p in points if p.setting == setting]
        axes.plot([m.rps for m in mine], [m.p99_ms for m in mine], marker="o", label=setting.label)
    if slo_ms is not None:
        axes.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    axes.set_xlabel("requests/s")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_yscale("log")
    axes.legend(fontsize=7)
    axes.set_title("modelbay bench: throughput against p99, one point per concurrency")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _write_folder(args: argparse.Namespace) -> Path | None:
    """The model folder --write records into; raises ValueError when there is none."""
    if not args.write:
        return None
    folder = Path(args.model)
    if args.url or not folder.is_dir():
        raise ValueError("--write records into a model folder's modelbay.yaml: give MODEL as a folder path")
    return folder


def _record(folder: Path, chosen: Point) -> None:
    from modelbay.export.manifest import record

    path = folder / MANIFEST_NAME
    batching = dict(read_yaml(path).get("batching") or {}) if path.is_file() else {}
    batching.pop("slo_ms", None)
    batching.update(chosen.setting.batching())
    m = chosen.measured
    comments = [
        f"{chosen.setting.label}: {m.rps:.0f} req/s, p99 {m.p99_ms:.2f} ms at concurrency {m.concurrency}"
    ]
    if chosen.setting.workers > 1:
        comments.append(f"serve with --workers {chosen.setting.workers}")
    written = record(folder, {"batching": batching}, comments, by="modelbay bench")
    print(f"modelbay bench: recorded {chosen.setting.label} in {written}", file=sys.stderr)


def _default_name(path: Path) -> str:
    return path.name.split(".")[0] if path.is_file() else path.name


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0 separated by commas, got {text!r}")
    return values
