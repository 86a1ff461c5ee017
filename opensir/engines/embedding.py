"""Sentence embeddings for the diversity reward: in the runner's own process (sentence-transformers)
or from a vLLM embedding server (OpenAI embeddings API)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from opensir.engines.replicas import server_root
from opensir.errors import OpensirError
from opensir.models import resolve_model
from opensir.retry import RetriesExhaustedError, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)


class SentenceTransformerEmbedder:
    """:class:`~opensir.seams.Embedder` backed by sentence-transformers.

    ``model`` is anything :func:`~opensir.models.resolve_model` accepts (a hub id, a local
    directory, ``builtin:all-minilm-l6-v2``); it is resolved to a local directory first, so loading
    never reaches the hub once the files are present. Rows are L2-normalised float32, so a dot
    product is the cosine similarity the diversity reward uses.
    """

    def __init__(self, model: str, *, batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        directory = resolve_model(model)
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.batch_size = batch_size
        # The resolved directory is complete: never ask the hub about it (slow or failing offline).
        self._model = SentenceTransformer(str(directory), device=device, local_files_only=True)
        # sentence-transformers 6 renamed the method; older releases only have the long name.
        width = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = width()
        if dim is None:
            raise ValueError(f"embedding model {model!r} does not declare its embedding width")
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        """Width of every embedding."""
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]`` with unit-norm rows (``[0, dim]`` for no texts)."""
        if len(texts) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class ServerEmbedder:
    """:class:`~opensir.seams.Embedder` over the OpenAI embeddings API of a vLLM embedding
    server (``vllm serve MODEL --runner pooling --convert embed``; see
    :func:`opensir.engines.vllm_server.start_local_server` with ``embedding=True``).

    Texts go in batches of ``batch_size`` to ``POST /v1/embeddings``; rows come back float32 and
    L2-normalised here (whatever the server's pooling normalisation). Connection errors, timeouts
    and 5xx (and 408/429) answers are retried with exponential backoff (:attr:`retry`) for up to
    ``retry_for_s`` seconds; then :class:`EmbeddingServerError` names the URL and the last cause.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        batch_size: int = 64,
        timeout_s: float = 120.0,
        retry_for_s: float = 120.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.base_url = server_root(base_url)
        self.model = model
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self.retry = RetryPolicy(
            attempts=None, base_delay=0.5, max_delay=10.0, jitter=0.5, max_elapsed=retry_for_s
        )
        """Paces the retries of a request: 0.5 s doubling up to 10 s, each at least half of that."""
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Width of every embedding (asked of the server once)."""
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]`` with unit-norm rows (``[0, dim]`` for no texts)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._request(list(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        self._dim = int(vectors.shape[1])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(norms)):
            raise EmbeddingServerError(
                f"embedding server {self.base_url} returned a zero or non-finite vector"
            )
        return np.ascontiguousarray(vectors / norms, dtype=np.float32)

    def _request(self, texts: list[str]) -> np.ndarray:
        url = f"{self.base_url}/v1/embeddings"
        body = json.dumps({"model": self.model, "input": texts, "encoding_format": "float"}).encode()

        def attempt() -> np.ndarray:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read().decode())
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                if error.code < 500 and error.code not in (408, 429):
                    raise EmbeddingServerError(
                        f"{url} rejected the request with HTTP {error.code}: {detail}"
                    ) from error
                raise _BusyAnswer(f"HTTP {error.code}: {detail}") from error
            rows = sorted(answer["data"], key=lambda item: item["index"])
            if len(rows) != len(texts):
                raise EmbeddingServerError(f"{url} returned {len(rows)} embeddings for {len(texts)} texts")
            return np.asarray([row["embedding"] for row in rows], dtype=np.float32)

        try:
            return call_with_retries(
                attempt,
                policy=self.retry,
                transient=lambda error: isinstance(error, _BusyAnswer | urllib.error.URLError | OSError),
                what=f"POST {url}",
                explain=_cause,
                logger=log,
            )
        except RetriesExhaustedError as failure:
            raise EmbeddingServerError(
                f"embedding server {self.base_url} did not answer after {failure.attempts} attempt(s) over "
                f"{failure.elapsed:.0f} s; last error: {failure.cause}"
            ) from failure.last_error


class _BusyAnswer(Exception):
    """A 5xx, 408 or 429 answer: worth asking again. Raised only for the retries to see; the message
    is the cause they report."""


def _cause(error: Exception) -> str:
    """What went wrong with one attempt, as the error after the last one reports it."""
    if isinstance(error, _BusyAnswer):
        return str(error)
    return str(getattr(error, "reason", error))


class EmbeddingServerError(OpensirError, RuntimeError):
    """The embedding server stayed unreachable or answered something unusable."""
