"""``make_embedder``: the one place that turns a spec into a backend (``spec.backend``:
``torch``, ``onnx`` or ``onnx-int8``)."""

from __future__ import annotations

import logging
from pathlib import Path

from jobfit.shared.model_store import version_of
from jobfit.workers.embedders.base import BaseEmbedder, ModelSpec
from jobfit.workers.embedders.export import export, quantize
from jobfit.workers.embedders.gate import gate, refusal
from jobfit.workers.embedders.onnx import OnnxEmbedder
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder

log = logging.getLogger(__name__)


def make_embedder(spec: ModelSpec, store: Path) -> BaseEmbedder:
    """The embedder for ``spec.backend``. ``onnx-int8`` serves only if it passed the gate;
    otherwise the worker serves fp32 torch and says why (a QualityGateError is logged)."""
    if spec.backend == "onnx":
        return OnnxEmbedder(spec, export(spec, store), int8=False)
    if spec.backend == "onnx-int8":
        verdict = gate(spec, store)
        if verdict["gate"]["int8_passes"]:
            return OnnxEmbedder(spec, quantize(spec, store), int8=True)
        log.error("%s", refusal(version_of(spec.path), verdict))
    return SentenceTransformerEmbedder(spec)
