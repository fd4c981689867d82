"""The checks an exported backend passes before it serves: a fixed check set (the bundled
sample's labelled matches, ``jobfit.shared.sample``), each backend judged on it, the verdicts.

ONNX fp32 (the CPU default) serves only if it is exact: its vectors' mean cosine to torch's
on the check set is at least ``FP32_MIN_COSINE`` (checked once per model version, when it is
exported: ``check_fp32``, kept in ``fp32.json``).

int8 serves only if its check-set Spearman stays within ``GATE_MAX_DROP`` of torch fp32's
and its vectors stay close to fp32's (mean cosine ``GATE_MIN_COSINE``). The verdict is
computed once per model version and kept next to the export (``gate.json``), with the
quantisation settings and CPU features it was judged with: a verdict made on a CPU with other
features (or one that does not say) is judged again.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobfit.shared.model_store import version_of
from jobfit.workers.embedders.base import Embedder, ModelSpec
from jobfit.workers.embedders.export import (
    export,
    export_dir,
    export_lock,
    quantize,
    quantized_with,
)
from jobfit.workers.embedders.onnx import OnnxEmbedder
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder

log = logging.getLogger(__name__)

GATE_FILE = "gate.json"
FP32_CHECK_FILE = "fp32.json"
# ONNX fp32 computes what torch fp32 does; it serves by default only if its vectors show it.
FP32_MIN_COSINE = 0.9999
# How far a quantised backend's check-set Spearman may be from fp32's (either way) to serve.
GATE_MAX_DROP = 0.005
# ...and how close its vectors must stay to fp32's (mean cosine). The Spearman of an untuned
# model on 816 matches is a weak check on its own: measured, int8 mpnet moved Spearman by
# only 0.007 while its vectors' cosine to fp32 fell to 0.86 on average (MiniLM: 0.993).
GATE_MIN_COSINE = 0.98


class QualityGateError(RuntimeError):
    """The int8 backend's check-set Spearman is too far below fp32's."""


@dataclass(frozen=True)
class CheckSet:
    """Labelled matches with their field texts: the fixed check set (the bundled sample's
    labels) that a backend is judged on."""

    texts: list[str]
    matches: list[tuple[dict[str, str], dict[str, str], float]]


def sample_check_set() -> CheckSet:
    """The bundled sample's labelled matches (its files are JSON Lines, one document a line;
    read here without ``shared.client``, which would bring Celery into a worker module)."""
    from jobfit.shared.fields import field_texts
    from jobfit.shared.sample import JOBS, LABELS, RESUMES, load_labels
    from jobfit.shared.schemas import JobDocument, ResumeDocument

    resumes = {
        d.id: field_texts(d) for d in map(ResumeDocument.model_validate_json, _lines(RESUMES))
    }
    jobs = {d.id: field_texts(d) for d in map(JobDocument.model_validate_json, _lines(JOBS))}
    matches = [
        ({p.value: t for p, t in resumes[r].items()}, {p.value: t for p, t in jobs[j].items()}, y)
        for (r, j), y in sorted(load_labels(LABELS).items())
        if r in resumes and j in jobs
    ]
    texts = sorted({t for m in matches for side in m[:2] for t in side.values()})
    return CheckSet(texts=texts, matches=matches)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text("utf-8").splitlines() if line.strip()]


def judge(embedder: Embedder, check: CheckSet) -> tuple[dict[str, float], np.ndarray]:
    """Match-level Spearman of the check set (mean pair cosine vs label) and throughput;
    also returns the vectors (for the cosine-to-fp32 figures)."""
    from scipy.stats import spearmanr

    embedder.encode(check.texts[:8])
    t0 = time.perf_counter()
    vectors = embedder.encode(check.texts)
    seconds = time.perf_counter() - t0
    index = {t: i for i, t in enumerate(check.texts)}
    scores, labels = [], []
    for r, j, y in check.matches:
        common = [p for p in r if p in j]
        if common:
            scores.append(
                float(np.mean([vectors[index[r[p]]] @ vectors[index[j[p]]] for p in common]))
            )
            labels.append(y)
    rho = float(spearmanr(scores, labels).statistic)
    return {
        "spearman": round(rho, 4),
        "sentences_per_s": round(len(check.texts) / seconds, 1),
        "texts": len(check.texts),
        "matches": len(scores),
    }, vectors


def compare(
    spec: ModelSpec,
    store: Path,
    check: CheckSet | None = None,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """torch fp32, ONNX fp32 and ONNX int8 on the check set: sentences/s, Spearman, drop vs
    torch fp32, cosine of each vector to the torch one; and whether int8 passes the gate."""
    check = check or sample_check_set()
    directory = quantize(spec, store, quantization)
    torch_metrics, ref = judge(SentenceTransformerEmbedder(spec), check)
    out: dict[str, Any] = {"torch": torch_metrics}
    for name, int8 in (("onnx", False), ("onnx-int8", True)):
        metrics, vecs = judge(OnnxEmbedder(spec, directory, int8=int8), check)
        cos = np.sum(vecs * ref, axis=1)
        metrics.update(
            speedup_vs_torch=round(
                metrics["sentences_per_s"] / torch_metrics["sentences_per_s"], 3
            ),
            spearman_drop=round(torch_metrics["spearman"] - metrics["spearman"], 4),
            cosine_to_torch_mean=round(float(cos.mean()), 5),
            cosine_to_torch_min=round(float(cos.min()), 5),
        )
        out[name] = metrics
    out["gate"] = {
        "max_drop": GATE_MAX_DROP,
        "min_cosine": GATE_MIN_COSINE,
        # "within": a rise beyond the bound means the ranking changed as much as a drop.
        "int8_passes": abs(out["onnx-int8"]["spearman_drop"]) <= GATE_MAX_DROP
        and out["onnx-int8"]["cosine_to_torch_mean"] >= GATE_MIN_COSINE,
        "check_set": f"bundled sample: {len(check.matches)} labelled matches",
    }
    return out


def gate(
    spec: ModelSpec, store: Path, quantization: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The gate's verdict for this model on this CPU (computed once, kept in ``gate.json``;
    again when the int8 graph there was made for a CPU with other features). ``quantization``:
    other settings than this CPU's (``export.quantization_settings``), to compare them."""
    with export_lock(spec, store):
        directory = quantize(spec, store, quantization)  # made again if made otherwise
        path = directory / GATE_FILE
        if path.is_file():
            verdict = dict(json.loads(path.read_text("utf-8")))
            if verdict.get("quantization") == quantized_with(directory):
                return verdict
            log.warning(
                "int8 verdict of %s was made with %s, this CPU quantises with %s: judging again",
                version_of(spec.path),
                verdict.get("quantization"),
                quantized_with(directory),
            )
        result = compare(spec, store, quantization=quantization)
        result["quantization"] = quantized_with(directory)
        _write_json(path, result)
        return result


def check_fp32(spec: ModelSpec, store: Path) -> dict[str, Any]:
    """Whether the ONNX fp32 export of this model is exact (``exact``, with the figures, or
    the ``error`` that kept it from being made): exported and checked once per model version,
    under the export lock, kept in ``fp32.json``. Delete the file to try again."""
    path = export_dir(spec, store) / FP32_CHECK_FILE
    with export_lock(spec, store):
        if path.is_file():
            return dict(json.loads(path.read_text("utf-8")))
        t0 = time.perf_counter()
        verdict: dict[str, Any]
        try:
            directory = export(spec, store)
            texts = sample_check_set().texts
            ref = SentenceTransformerEmbedder(spec).encode(texts)
            cos = np.sum(OnnxEmbedder(spec, directory, int8=False).encode(texts) * ref, axis=1)
            verdict = {
                "exact": bool(cos.mean() >= FP32_MIN_COSINE),
                "cosine_to_torch_mean": round(float(cos.mean()), 6),
                "cosine_to_torch_min": round(float(cos.min()), 6),
                "min_cosine": FP32_MIN_COSINE,
                "texts": len(texts),
            }
        except Exception as exc:  # any failure to export or run it: torch serves
            log.exception("ONNX export of %s failed", version_of(spec.path))
            verdict = {"exact": False, "error": f"{type(exc).__name__}: {exc}"}
        verdict["seconds"] = round(time.perf_counter() - t0, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, verdict)
        return verdict


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def refusal(spec_version: str, verdict: dict[str, Any]) -> QualityGateError:
    """Why the gate refused int8 for ``spec_version``, in the verdict's own numbers."""
    return QualityGateError(
        f"int8 backend refused for {spec_version}: check-set Spearman "
        f"{verdict['onnx-int8']['spearman']} vs fp32 {verdict['torch']['spearman']} "
        f"(allowed ±{GATE_MAX_DROP}), mean cosine to fp32 "
        f"{verdict['onnx-int8']['cosine_to_torch_mean']} (at least {GATE_MIN_COSINE}); "
        "serving torch fp32"
    )
