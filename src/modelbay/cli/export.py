"""`modelbay export ARTIFACT --to onnx|pt2`: export a PyTorch model and prove it answers the same.

The steps (modelbay.export): load the artifact as `modelbay serve` would; capture it with
torch.export, batch dimension dynamic; write the export to a staging folder beside --out; load it
back as the server would and run both on the same inputs; print the errors per output; move it to
--out only if it passed, else exit 2 naming the tolerance. With --pick, time the backends that
pass and record the fastest in the model folder's modelbay.yaml.
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbay.errors import ExportFailed, ModelLoadError
from modelbay.settings import MANIFEST_NAME

if TYPE_CHECKING:  # the export package imports torch: only when the command runs
    from modelbay.export.check import Arrays, Tolerance
    from modelbay.export.source import ExportSource
    from modelbay.loading.runner import Runner

MODEL_FIELDS = ("format", "arch", "arch_kwargs", "trust_pickle", "inputs", "outputs")
BACKEND_KEYS = ("eager", "compile", "export")
# What each target needs beyond the base package (module -> what to pip install): torch to load
# and capture the model; for ONNX also the dynamo exporter's onnx and onnxscript, which torch does
# not bring, and onnxruntime to run the export in the check.
NEEDS = {
    "pt2": {"torch": "modelbay[torch]"},
    "onnx": {
        "torch": "modelbay[torch]",
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "modelbay[onnx]",
    },
}


def add_parser(commands: Any) -> None:
    """Add `export` to the `modelbay` subparsers `commands`."""
    from modelbay.cli.main import artifact_arguments  # main imports this module: a top-level one would cycle

    export = commands.add_parser(
        "export",
        help="export a PyTorch model to ONNX or a torch.export .pt2, checked against the original",
        description="Export the model of ARTIFACT (any PyTorch artifact modelbay serves) with a dynamic "
        "batch dimension, run the original and the export on the same inputs at several batch sizes, "
        "print the largest absolute and relative error per output, and write the export only if they "
        "agree within the tolerance (else exit 2). --pick also times the backends and records the "
        "fastest that passes in the model folder's modelbay.yaml.",
    )
    export.add_argument(
        "artifact", metavar="ARTIFACT", help="model file or model folder, as `modelbay serve`"
    )
    export.add_argument(
        "--to", required=True, choices=["onnx", "pt2"], help="ONNX, or a torch.export program"
    )
    export.add_argument("--out", help="the file to write (default: beside the model, NAME.onnx / NAME.pt2)")
    export.add_argument(
        "--force", action="store_true", help="replace the default output file when it exists already"
    )
    model = export.add_argument_group("the model (as modelbay serve's flags)")
    artifact_arguments(model)
    model.add_argument(
        "--example-shape",
        dest="example_shapes",
        action="append",
        type=_sizes,
        metavar="SHAPE",
        help="an input's shape with its batch dim, e.g. 1,3,224,224; once per input, in order "
        "(for models whose file does not say it)",
    )
    check = export.add_argument_group("the numeric check")
    check.add_argument("--examples", metavar="FILE.npz", help="real inputs: one array per input, [n, ...]")
    check.add_argument("--batch-sizes", type=_sizes, default=[1, 2, 7], help="random inputs' batches (1,2,7)")
    check.add_argument("--atol", type=_tolerance, default=1e-4, help="absolute tolerance (1e-4)")
    check.add_argument(
        "--rtol", type=_tolerance, default=1e-3, help="relative tolerance, of |original| (1e-3)"
    )
    pick = export.add_argument_group("choosing a backend")
    pick.add_argument(
        "--pick", action="store_true", help="time the backends, record the fastest in modelbay.yaml"
    )
    pick.add_argument(
        "--backends",
        type=_backends,
        default=list(BACKEND_KEYS),
        help="with --pick: which to time, of eager, compile (torch.compile), export (onnxruntime or "
        ".pt2); default all",
    )
    pick.add_argument(
        "--pick-seconds", type=_seconds, default=1.0, help="time per backend and batch size (1)"
    )


def _sizes(text: str) -> list[int]:
    """`1,3,224,224` as [1, 3, 224, 224]. Raises argparse.ArgumentTypeError (exit 2) unless all >= 1."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected sizes >= 1 separated by commas, e.g. 1,3,224,224"
        )
    return sizes


def _tolerance(text: str) -> float:
    """A tolerance: a finite number >= 0. Raises argparse.ArgumentTypeError (exit 2) otherwise
    (a negative or NaN one would refuse every export, an infinite one pass any)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number >= 0, e.g. 1e-4")
    return value


def _seconds(text: str) -> float:
    """A duration in seconds: a finite number > 0. Raises argparse.ArgumentTypeError (exit 2) otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds > 0, e.g. 0.5")
    return value


def _backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(BACKEND_KEYS):
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {','.join(BACKEND_KEYS)}")
    return names


def run(args: argparse.Namespace) -> int:
    """Run `modelbay export`; exit status 2 when the model cannot be loaded or exported, when
    the export fails the check (nothing is written then), or when a file cannot be written."""
    try:
        return _export(args)
    except (ModelLoadError, ExportFailed) as exc:
        print(f"modelbay: export: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out's folder not writable, a read-only modelbay.yaml, a full disk
        print(f"modelbay: export: {exc}", file=sys.stderr)
        return 2


def check_packages(target: str) -> None:
    """Import what `--to target` needs (NEEDS). Raises ExportFailed naming every missing package
    and the pip install that brings it, before any model is loaded."""
    missing = {}
    for module, install in NEEDS[target].items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing[module] = install
    if missing:
        installs = " ".join(f"'{name}'" for name in dict.fromkeys(missing.values()))
        raise ExportFailed(
            f"--to {target} needs {', '.join(missing)}, not installed here: pip install {installs}"
        )


def _export(args: argparse.Namespace) -> int:
    check_packages(args.to)
    from modelbay.export import capture, check, source, targets  # torch: only for this command

    given = {key: getattr(args, key) for key in MODEL_FIELDS if getattr(args, key) is not None}
    examples = Path(args.examples) if args.examples else None
    model = source.load_source({"path": args.artifact, **given}, args.example_shapes, examples)
    out = destination(model, args.to, args.out, args.force)
    tolerance = check.Tolerance(args.atol, args.rtol)
    cases = check.check_cases(model.inputs, args.batch_sizes, model.examples)
    program = capture.capture(model.module, check.random_inputs(model.inputs, 2, np.random.default_rng(0)))
    with targets.staged(out) as staging:
        targets.write(program, args.to, staging, [spec.name for spec in model.inputs], model.output_names)
        exported = targets.read(args.to, staging)
        report = check.compare(model.runner, exported, model.output_names, cases, tolerance)
        print(f"check: {targets.BACKENDS[args.to]} against the original on {', '.join(report.cases)}")
        print(report.table())
        if not report.passed:
            print(
                f"modelbay: export rejected: {report.failure()}; nothing was written to {out}",
                file=sys.stderr,
            )
            return 2
        targets.publish(staging, out)
    print(f"modelbay: wrote {out}: it answers as the original within {tolerance}", file=sys.stderr)
    if args.pick:
        _pick(args, model, exported, out, cases, tolerance, given)
    elif model.folder is not None and out.parent.resolve() == model.folder.resolve():
        _pin_weights(model.folder, model.weights, out)
    return 0


def destination(model: ExportSource, target: str, out: str | None, force: bool = False) -> Path:
    """--out, else NAME.onnx / NAME.pt2 beside the model's file (modelbay.export.paths).

    Raises ExportFailed when --out is a folder (it names the file to write), or when the default
    file exists already and `force` is not given (it may be another model: digits.safetensors
    exported to .pt2 would replace a digits.pt2 beside it).
    """
    from modelbay.export.paths import export_path

    if out and Path(out).is_dir():
        example = Path(out) / f"model.{target}"
        raise ExportFailed(f"--out {out} is a folder; name the file to write, e.g. {example}")
    if out:
        return Path(out)
    path = export_path(model.weights, target)
    if path.exists() and not force:
        raise ExportFailed(
            f"{path} exists already: pass --force to replace it, or --out FILE to write elsewhere"
        )
    return path


def _pin_weights(folder: Path, weights: Path, out: Path) -> None:
    """Name the original in the folder's modelbay.yaml when it did not say which file to serve: the
    folder now holds two model files, and one must be named."""
    from modelbay.export.manifest import has_field, record, relative

    if has_field(folder, "weights"):
        return
    path = record(folder, {"weights": relative(weights, folder)}, [f"{out.name} was exported from it"])
    print(f"modelbay: {path} now names {weights.name} as the model's weights", file=sys.stderr)


def _pick(
    args: argparse.Namespace,
    model: ExportSource,
    exported: Runner,
    out: Path,
    cases: list[tuple[str, Arrays]],
    tolerance: Tolerance,
    given: dict[str, Any],
) -> None:
    """Time the backends of --backends, print the table and record the fastest that passes."""
    from modelbay.export import manifest, pick
    from modelbay.export.targets import BACKENDS
    from modelbay.loading.detect import Format, detect

    folder = model.folder or model.weights.parent
    original = {"weights": manifest.relative(model.weights, folder), "format": detect(model.weights).value}
    backends = []
    if "eager" in args.backends:
        backends.append(pick.Backend("torch eager", model.runner, {**original, "torch_compile": False}))
    if "compile" in args.backends:
        print("modelbay: compiling with torch.compile (seconds to minutes)...", file=sys.stderr)
        backends.append(pick.compiled_backend(model, cases, tolerance, {**original, "torch_compile": True}))
    if "export" in args.backends:
        fmt = Format.ONNX if args.to == "onnx" else Format.EXPORTED
        settings = {"weights": manifest.relative(out, folder), "format": fmt.value, "torch_compile": False}
        backends.append(pick.Backend(BACKENDS[args.to], exported, settings))
    pick.measure(backends, model.inputs, args.batch_sizes, args.pick_seconds)
    chosen = pick.choose(backends)
    lines = pick.table(backends, args.batch_sizes, chosen)
    print("\n".join(lines))
    if chosen is None:
        raise ExportFailed("--pick: no backend could be timed (see the table); modelbay.yaml was not changed")
    new = not (folder / MANIFEST_NAME).is_file()
    fields = {**_new(model, given), **chosen.settings} if new else chosen.settings
    when = time.strftime("%Y-%m-%d")
    heading = (
        f"modelbay export --pick, {when} on {platform.node()} ({platform.machine()}): {chosen.name} chosen"
    )
    path = manifest.record(folder, fields, [heading, *lines])
    print(f"modelbay: {chosen.name} is the fastest that passes; recorded in {path}", file=sys.stderr)


def _new(model: ExportSource, given: dict[str, Any]) -> dict[str, Any]:
    """What a new modelbay.yaml beside a model file needs to serve it as before: its name, the
    model flags given here, and its inputs as the check used them."""
    inputs = [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape or ())} for s in model.inputs]
    fields = {key: value for key, value in given.items() if key not in ("format", "inputs")}
    return {"name": model.config.name, **fields, "inputs": inputs}
