"""The usual hand-written server: FastAPI, a pydantic body, one forward pass per request.

MODEL=linear uvicorn benchmarks.servers.fastapi_app:app
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from fastapi import FastAPI
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build

model = build(os.environ.get("MODEL", "linear"))
app = FastAPI()


class Request(BaseModel):
    input: list


@app.post("/predict")
def predict(request: Request) -> dict:
    with torch.inference_mode():
        output = model(torch.tensor(request.input).unsqueeze(0))
    return {"predictions": output[0].tolist()}
