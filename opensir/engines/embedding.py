"""Sentence embeddings for the diversity reward, computed in the runner's own process."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from opensir.engines.models import resolve_model


class SentenceTransformerEmbedder:
    """:class:`~opensir.engines.base.Embedder` backed by sentence-transformers.

    ``model`` is anything :func:`~opensir.engines.models.resolve_model` accepts (a hub id, a local
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
