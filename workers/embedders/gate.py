"""The quality gate of the int8 backend: a fixed check set (the bundled sample's labelled
matches, ``jobfit.shared.sample``), each backend judged on it, and the verdict.

int8 serves only if its check-set Spearman stays within ``GATE_MAX_DROP`` of torch fp32's
and its vectors stay close to fp32's (mean cosine ``GATE_MIN_COSINE``). The verdict is
computed once per model version and kept next to the export (``gate.json``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobfit.workers.embedders.base import Embedder, ModelSpec
from jobfit.workers.embedders.export import quantize
from jobfit.workers.embedders.onnx import OnnxEmbedder
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder

GATE_FILE = "gate.json"
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


def compare(spec: ModelSpec, store: Path, check: CheckSet | None = None) -> dict[str, Any]:
    """torch fp32, ONNX fp32 and ONNX int8 on the check set: sentences/s, Spearman, drop vs
    torch fp32, cosine of each vector to the torch one; and whether int8 passes the gate."""
    check = check or sample_check_set()
    directory = quantize(spec, store)
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


def gate(spec: ModelSpec, store: Path) -> dict[str, Any]:
    """The gate's verdict for this model (computed once, kept in ``gate.json``)."""
    path = quantize(spec, store) / GATE_FILE
    if path.is_file():
        return dict(json.loads(path.read_text("utf-8")))
    result = compare(spec, store)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return result


def refusal(spec_version: str, verdict: dict[str, Any]) -> QualityGateError:
    """Why the gate refused int8 for ``spec_version``, in the verdict's own numbers."""
    return QualityGateError(
        f"int8 backend refused for {spec_version}: check-set Spearman "
        f"{verdict['onnx-int8']['spearman']} vs fp32 {verdict['torch']['spearman']} "
        f"(allowed ±{GATE_MAX_DROP}), mean cosine to fp32 "
        f"{verdict['onnx-int8']['cosine_to_torch_mean']} (at least {GATE_MIN_COSINE}); "
        "serving torch fp32"
    )
