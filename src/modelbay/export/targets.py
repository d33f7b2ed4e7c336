"""The export targets: a torch.export program written as ONNX or `.pt2`, and read back as a Runner.

An export is written into a staging folder beside its destination and moved there only once it
has passed the check (`staged`), so a failed or interrupted export leaves nothing half-written
where the user looks. ONNX: the dynamo exporter (`torch.onnx.export(program, dynamo=True)`, the
exporter PyTorch recommends since 2.5), weights inside the file unless the model passes 2 GB
(protobuf's limit: then beside it in `NAME.onnx.data`, moved along). Read back by the loaders
`modelbay serve` uses, so the check runs the export exactly as it will be served.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from modelbay.errors import ExportFailed
from modelbay.export.capture import quiet
from modelbay.export.check import summary
from modelbay.loading.detect import Format
from modelbay.loading.loaders import load_runner
from modelbay.loading.runner import Runner
from modelbay.settings import ModelConfig

BACKENDS = {"onnx": "onnxruntime", "pt2": "torch.export"}  # what runs each target in the check


def write(
    program: torch.export.ExportedProgram,
    target: str,
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> None:
    """Write `program` to `path` as `target` ("onnx" or "pt2"); ONNX names its inputs and outputs
    `input_names` / `output_names` (the names the model is served with).

    Raises ExportFailed when the ONNX exporter cannot translate the program.
    """
    if target == "pt2":
        torch.export.save(program, path)
        return
    try:
        with quiet():
            onnx_program = torch.onnx.export(
                program, dynamo=True, input_names=list(input_names), output_names=list(output_names)
            )
            assert onnx_program is not None  # None only for the TorchScript exporter (dynamo=False)
            onnx_program.save(str(path))
    except ImportError as exc:  # the dynamo exporter needs onnx and onnxscript, which torch does not bring
        raise ExportFailed(
            f"the ONNX exporter needs the onnx and onnxscript packages ({exc}): pip install onnx onnxscript"
        ) from exc
    except Exception as exc:
        raise ExportFailed(f"the ONNX exporter cannot translate the model: {summary(exc)}") from exc


def read(target: str, path: Path) -> Runner:
    """The written export as a Runner, by the loader `modelbay serve` would use (onnxruntime for
    ONNX, torch.export.load for .pt2). Raises ModelLoadError when it cannot be loaded, or the
    loader's package is not installed (onnxruntime: modelbay[onnx])."""
    fmt = Format.ONNX if target == "onnx" else Format.EXPORTED
    return load_runner(fmt, path, ModelConfig(path=str(path)))


@contextlib.contextmanager
def staged(destination: Path) -> Iterator[Path]:
    """A path in a fresh hidden folder beside `destination` to write the export to.

    `publish` moves what was written there (and its `.data` file, if any) to `destination`;
    the folder is removed when the block ends, whatever happened.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".modelbay-export-", dir=destination.parent))
    try:
        yield folder / destination.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staging: Path, destination: Path) -> None:
    """Move the staged export `staging` (and `staging.data`) to `destination`, each atomically
    (same file system), replacing what was there."""
    data = staging.with_name(staging.name + ".data")
    if data.exists():
        data.replace(destination.with_name(destination.name + ".data"))
    staging.replace(destination)
