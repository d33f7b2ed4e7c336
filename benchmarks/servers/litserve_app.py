"""LitServe with its dynamic batching, the way its docs serve a PyTorch model.

MODEL=linear PORT=8000 python benchmarks/servers/litserve_app.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import litserve as ls
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build


class API(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = build(os.environ.get("MODEL", "linear"))

    def decode_request(self, request: dict) -> torch.Tensor:
        return torch.tensor(request["input"])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)

    def encode_response(self, output: torch.Tensor) -> dict:
        return {"predictions": output.tolist()}


if __name__ == "__main__":
    server = ls.LitServer(
        API(max_batch_size=64, batch_timeout=0.001), accelerator="cpu", workers_per_device=1
    )
    server.run(
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        generate_client_file=False,
        log_level="warning",
    )
