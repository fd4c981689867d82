"""The model as training and evaluation load it, and its embeddings of distinct texts:
a field text occurs in many pairs (38k pairs of 1.2k texts), so each is encoded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Progress = Callable[..., None]  # progress(stage, done, total, **info)


def no_progress(stage: str, done: int, total: int, **info: Any) -> None:
    """A Progress that reports nothing."""
    return None


def load_model(path: Path, device: str, max_seq_length: int = 384) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


def encode_unique(
    model: Any, texts: Sequence[str], *, batch_size: int, progress: Progress, stage: str
) -> dict[str, np.ndarray]:
    """Each distinct text once, shortest first (less padding), in batches with progress."""
    import torch

    unique = sorted(set(texts), key=len)
    out: dict[str, np.ndarray] = {}
    step = max(batch_size * 8, 64)
    with torch.inference_mode():
        for i in range(0, len(unique), step):
            chunk = unique[i : i + step]
            vecs = model.encode(
                chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            out.update(zip(chunk, np.asarray(vecs, dtype=np.float32), strict=True))
            progress(stage, min(i + step, len(unique)), len(unique))
    return out
