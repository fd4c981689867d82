"""The model behind a small interface: a frozen spec in, normalised float32 numpy out.

Every backend (``torch``, ``onnx``) implements ``Embedder`` by subclassing ``BaseEmbedder``;
the spec says which model, where it runs and how texts are batched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from jobfit.shared.config import ModelSettings
from jobfit.shared.model_store import model_name, resolve_model_path


class Embedder(Protocol):
    """What the pipeline needs from a model."""

    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    name: str
    device: str = "cpu"
    fp16: bool = False
    batch_size: int = 64
    max_seq_length: int = 384
    token_budget: int = 512
    pass_overhead: int = 0
    backend: str = "torch"
    threads: int | None = None

    @classmethod
    def from_settings(cls, s: ModelSettings, path: Path | None = None) -> ModelSpec:
        """The configured model, or the one at ``path`` (a registry version) with the same
        device and batching settings; the configured model is then not looked up at all."""
        path = path if path is not None else resolve_model_path(s)
        device = resolve_device(s.device)
        cuda = device.startswith("cuda")
        return cls(
            path=path,
            name=model_name(path),
            device=device,
            fp16=s.fp16,
            batch_size=s.batch_size or (128 if cuda else 16),
            max_seq_length=s.max_seq_length,
            token_budget=s.token_budget or (16384 if cuda else 512),
            pass_overhead=s.pass_overhead_tokens
            if s.pass_overhead_tokens is not None
            else (1024 if cuda else 64),
            # auto: torch (fp16) on a GPU; on a CPU, ONNX fp32 where exact (select.make_embedder).
            backend="torch" if cuda and s.backend == "auto" else s.backend,
            threads=s.threads,
        )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. Call it in the worker child."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class BaseEmbedder:
    """What every backend shares: a version, a dimension, a warm-up, and a lock: one encode
    at a time (a solo worker runs batches beside its event loop; the tokenizers are not
    safe to call from two threads at once)."""

    _version: str
    _dim: int
    backend: str  # what serves: torch, onnx, onnx-int8 (or instant, the benchmark aid)

    def __init__(self) -> None:
        self._encode_lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._version

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """Rows are L2-normalised float32 on the CPU, in the order of ``texts``."""
        with self._encode_lock:
            return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def warm_up(self) -> None:
        self.encode(["Skills: Python, SQL", "Job title: Data Engineer"])
