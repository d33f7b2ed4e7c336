"""The ONNX file a served model version offers for download (`GET /v2/models/{m}[/versions/{v}]/onnx`).

Only a version whose settings say `offer_onnx: true` offers anything (its weights leave the server).
A version that serves ONNX offers its own file. A version that serves a PyTorch file offers the
ONNX that `modelbay export` wrote beside it (modelbay.export.paths: digits.pt2 -> digits.onnx),
checked against it when it was written, provided it is not older than the file it was exported
from (an older one came from other weights). Clients keep it as a local copy that answers when
the server cannot (modelbay.client.local).
"""

from __future__ import annotations

from pathlib import Path

from modelbay.errors import ModelNotFound
from modelbay.export.paths import export_path
from modelbay.loading.detect import Format, detect
from modelbay.registry.registry import ServedModel


def onnx_file(served: ServedModel) -> Path:
    """The ONNX file of `served` (see the module docstring).

    Raises ModelNotFound saying why when it has none: its settings do not offer it (`offer_onnx`,
    off by default), it was handed over in memory or is a predict.py handler, or it serves a
    PyTorch file with no (current) export beside it.
    """
    what = f"model {served.name!r} version {served.version}"
    if not served.offer_onnx:
        raise ModelNotFound(
            f"{what} does not offer its ONNX file: its owner may set `offer_onnx: true` in its modelbay.yaml"
        )
    artifact = served.artifact
    if artifact is None:
        raise ModelNotFound(f"{what} was not loaded from a model file, so it has no ONNX file to offer")
    if artifact.is_file() and detect(artifact) is Format.ONNX:
        return artifact
    exported = export_path(artifact, "onnx")
    if exported.is_file() and artifact.is_file() and exported.stat().st_mtime >= artifact.stat().st_mtime:
        return exported
    raise ModelNotFound(
        f"{what} serves {artifact.name}, not ONNX, and has no ONNX export beside it: run "
        f"`modelbay export {artifact} --to onnx` to offer one"
    )
