"""``make_embedder``: the one place that turns a spec into a backend (``spec.backend``:
``auto``, ``torch``, ``onnx``, ``onnx-int8``, or ``instant``: the benchmark's stand-in)."""

from __future__ import annotations

import logging
from pathlib import Path

from jobfit.shared.model_store import version_of
from jobfit.workers.embedders.base import BaseEmbedder, ModelSpec
from jobfit.workers.embedders.export import (
    FP32_FILE,
    OPT_FILE,
    export,
    export_dir,
    int8_file,
    quantize,
)
from jobfit.workers.embedders.gate import check_fp32, gate, refusal
from jobfit.workers.embedders.instant import InstantEmbedder
from jobfit.workers.embedders.onnx import OnnxEmbedder
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder

log = logging.getLogger(__name__)


def make_embedder(spec: ModelSpec, store: Path) -> BaseEmbedder:
    """The embedder for ``spec.backend``. ``onnx-int8`` serves only if it passed the gate;
    otherwise the worker serves fp32 torch and says why (a QualityGateError is logged).
    ``auto`` (on a CPU; ``ModelSpec.from_settings`` makes it ``torch`` on a GPU) serves ONNX
    fp32 if its export is exact (``check_fp32``), otherwise torch, and says why. ``instant``
    runs no model (a fixed vector: the pipeline's ceiling, for benchmarks)."""
    if spec.backend == "instant":
        return InstantEmbedder(spec)
    if spec.backend == "auto":
        verdict = check_fp32(spec, store)
        if verdict["exact"]:
            directory = export_dir(spec, store)
            graph = verdict.get("graph")  # a verdict that names none: the plain export
            if graph not in (None, FP32_FILE, OPT_FILE) or not (directory / str(graph)).is_file():
                if graph is not None:
                    log.warning("ONNX fp32 verdict names %r, not a graph here: plain", graph)
                graph = FP32_FILE
            return OnnxEmbedder(spec, directory, int8=False, graph=graph)
        log.warning(
            "ONNX fp32 not served for %s (%s): serving torch",
            version_of(spec.path),
            verdict.get("error") or f"mean cosine to torch {verdict['cosine_to_torch_mean']}",
        )
    if spec.backend == "onnx":
        return OnnxEmbedder(spec, export(spec, store), int8=False)
    if spec.backend == "onnx-int8":
        verdict = gate(spec, store)
        if verdict["gate"]["int8_passes"]:
            # The graph of the settings that passed (its own file: never replaced).
            directory = quantize(spec, store, verdict["quantization"])
            graph = int8_file(verdict["quantization"])
            return OnnxEmbedder(spec, directory, int8=True, graph=graph)
        log.error("%s", refusal(version_of(spec.path), verdict))
    return SentenceTransformerEmbedder(spec)
