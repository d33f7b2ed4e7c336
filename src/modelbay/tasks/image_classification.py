"""`task: image-classification`: an encoded image in, the top-k labels with scores out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbay.codecs.images import ImageTransform, decode_base64
from modelbay.errors import ModelLoadError
from modelbay.settings import ImageConfig
from modelbay.tasks.tensor import Arrays, TensorPredictor
from modelbay.types import TensorSpec

if TYPE_CHECKING:  # the runner protocol only: importing modelbay.loading here would be a cycle
    from modelbay.loading.runner import Runner


class ImageClassifier(TensorPredictor):
    """A one-input image model: the simple door takes JPEG/PNG bytes (raw, multipart or base64 JSON).

    The Open Inference Protocol door still takes the preprocessed tensor [n, C, H, W] and returns
    the raw scores, so tensor clients see the model as it is.
    labels:  class names, index i naming column i of the first output; None names them "0", "1", ...
    top_k:   labels per answer, highest score first.
    softmax: apply softmax to the first output (logits); False when it already holds probabilities.
    Raises ModelLoadError at construction when the model has more than one input.
    """

    preprocess_in_thread = True  # decoding and resizing an image is real CPU work

    def __init__(
        self,
        runner: Runner,
        image: ImageConfig,
        labels: Sequence[str] | None = None,
        top_k: int = 5,
        softmax: bool = True,
        inputs: Sequence[TensorSpec] | None = None,
        outputs: Sequence[TensorSpec] | None = None,
    ) -> None:
        super().__init__(runner, inputs, outputs)
        if len(self.inputs) != 1:
            raise ModelLoadError(
                f"image-classification needs a model with one input, this one has {len(self.inputs)}"
            )
        self.transform = ImageTransform(image)
        self.labels = list(labels) if labels is not None else None
        self.top_k = top_k
        self.softmax = softmax

    def setup(self, model_dir: Path | None) -> None:
        """Probe the model (see TensorPredictor.setup) and check there is one label per class."""
        super().setup(model_dir)
        classes = self.outputs[0].shape[-1] if self.outputs and self.outputs[0].shape else None
        if self.labels is not None and classes not in (None, -1, len(self.labels)):
            raise ModelLoadError(f"{len(self.labels)} labels given for a model with {classes} classes")

    def preprocess(self, example: Any) -> Arrays:
        """Image bytes, or a base64 string of them -> input [1, C, H, W] float32.

        Anything else is taken as a JSON tensor (TensorPredictor.preprocess). Raises InvalidInput
        for undecodable images or base64, PayloadTooLarge for oversized images.
        """
        if isinstance(example, str):
            example = decode_base64(example)
        if isinstance(example, bytes | bytearray):
            return self.decode_tensors({self.inputs[0].name: self.transform(bytes(example))[None]})
        return super().preprocess(example)

    def postprocess(self, output: Arrays) -> list[dict[str, Any]]:
        """First output's row 0 -> [{"label": str, "score": float}] * top_k, best first."""
        scores = output[0][0].astype(np.float64).reshape(-1)
        if self.softmax:
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        best = np.argsort(-scores, kind="stable")[: self.top_k]
        names = self.labels
        return [
            {"label": names[i] if names is not None and i < len(names) else str(i), "score": float(scores[i])}
            for i in best
        ]
