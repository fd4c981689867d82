"""The checks an exported backend passes before it serves: a fixed check set (the bundled
sample's labelled matches, ``jobfit.shared.sample``), each backend judged on it, the verdicts.

ONNX fp32 (the CPU default) serves only if it is exact: its vectors' mean cosine to torch's
on the check set is at least ``FP32_MIN_COSINE`` (checked once per model version, when it is
exported: ``check_fp32``, kept in ``fp32.json``). Two fp32 graphs are checked, the plain
export and its optimised form (onnxruntime's fusions), and timed on the check set: the
optimised one serves where it is exact and faster by ``OPT_MIN_GAIN``, else the plain one.

int8 serves only if its check-set Spearman stays within ``GATE_MAX_DROP`` of torch fp32's
and its vectors stay close to fp32's (mean cosine ``GATE_MIN_COSINE``). The quantisation
schemes are tried fastest first (``export.INT8_SCHEMES``); the first that passes serves. The
verdict is computed once per model version and kept next to the export (``gate.json``), with
the settings and CPU features it was judged with and every scheme tried: a verdict made on a
CPU with other features (or one that does not say) is judged again.
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
    FP32_FILE,
    OPT_FILE,
    cpu_features,
    export,
    export_dir,
    export_lock,
    int8_file,
    optimize,
    quantization_ladder,
    quantization_settings,
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
# The optimised fp32 graph (onnxruntime's fusions) serves only if it is at least this much
# faster than the plain export on the check set: measured on MiniLM (AVX-512, 2 busy cores)
# the two were within each other's noise, and the plain graph is the one served so far.
OPT_MIN_GAIN = 0.05
# Rounds of the graphs' timing on the check set (each graph's fastest counts).
TIMING_ROUNDS = 3
TIMING_TEXTS = 96  # of the check set's: enough to rank two graphs, a third of its time


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


@dataclass(frozen=True)
class Reference:
    """torch fp32 and ONNX fp32 on the check set: judged once, whatever int8 settings are
    compared with them."""

    check: CheckSet
    torch: dict[str, Any]
    vectors: np.ndarray  # torch's
    onnx: dict[str, Any]

    @classmethod
    def of(cls, spec: ModelSpec, store: Path, check: CheckSet) -> Reference:
        torch_metrics, ref = judge(SentenceTransformerEmbedder(spec), check)
        onnx = _versus(
            OnnxEmbedder(spec, export(spec, store), int8=False), check, torch_metrics, ref
        )
        return cls(check, torch_metrics, ref, onnx)


def _versus(
    embedder: Embedder, check: CheckSet, torch_metrics: dict[str, Any], ref: np.ndarray
) -> dict[str, Any]:
    """A backend's figures on the check set, and against torch fp32's."""
    metrics, vecs = judge(embedder, check)
    cos = np.sum(vecs * ref, axis=1)
    return {
        **metrics,
        "speedup_vs_torch": round(metrics["sentences_per_s"] / torch_metrics["sentences_per_s"], 3),
        "spearman_drop": round(torch_metrics["spearman"] - metrics["spearman"], 4),
        "cosine_to_torch_mean": round(float(cos.mean()), 5),
        "cosine_to_torch_min": round(float(cos.min()), 5),
    }


def compare(
    spec: ModelSpec,
    store: Path,
    check: CheckSet | None = None,
    quantization: dict[str, Any] | None = None,
    reference: Reference | None = None,
) -> dict[str, Any]:
    """torch fp32, ONNX fp32 and ONNX int8 (quantised with ``quantization``: default, this
    CPU's first scheme) on the check set: sentences/s, Spearman, drop vs torch fp32, cosine
    of each vector to the torch one; and whether int8 passes the gate."""
    if reference is None:
        reference = Reference.of(spec, store, check or sample_check_set())
    quantization = quantization or quantization_settings(cpu_features())
    directory = quantize(spec, store, quantization)
    int8 = OnnxEmbedder(spec, directory, int8=True, graph=int8_file(quantization))
    out: dict[str, Any] = {
        "torch": reference.torch,
        "onnx": reference.onnx,
        "onnx-int8": _versus(int8, reference.check, reference.torch, reference.vectors),
    }
    out["gate"] = {
        "max_drop": GATE_MAX_DROP,
        "min_cosine": GATE_MIN_COSINE,
        # "within": a rise beyond the bound means the ranking changed as much as a drop.
        "int8_passes": abs(out["onnx-int8"]["spearman_drop"]) <= GATE_MAX_DROP
        and out["onnx-int8"]["cosine_to_torch_mean"] >= GATE_MIN_COSINE,
        "check_set": f"bundled sample: {len(reference.check.matches)} labelled matches",
    }
    return out


def judge_ladder(spec: ModelSpec, store: Path, ladder: list[dict[str, Any]]) -> dict[str, Any]:
    """int8 quantised with each settings of ``ladder`` in turn, judged, until one passes: the
    comparison (``compare``) of the one that passed (else of the last judged), its settings
    (``quantization``), ``tried`` (each one's int8 figures, or the error that kept it from
    being made: refused, and the next is tried) and ``ladder``."""
    reference = Reference.of(spec, store, sample_check_set())
    tried: list[dict[str, Any]] = []
    judged: tuple[dict[str, Any], dict[str, Any]] | None = None
    for settings in ladder:
        try:
            result = compare(spec, store, quantization=settings, reference=reference)
        except Exception as exc:  # this scheme cannot be made here: the next may
            log.exception("int8 %s of %s could not be made", settings, version_of(spec.path))
            error = f"{type(exc).__name__}: {exc}"
            tried.append({"quantization": settings, "passes": False, "error": error})
            continue
        judged = (settings, result)
        int8 = result["onnx-int8"]
        tried.append(
            {
                "quantization": settings,
                "passes": result["gate"]["int8_passes"],
                **{
                    k: int8.get(k)
                    for k in ("speedup_vs_torch", "spearman_drop", "cosine_to_torch_mean")
                },
            }
        )
        if result["gate"]["int8_passes"]:
            break
    if judged is None:  # none could be made: refused, naming no graph
        return {
            "torch": reference.torch,
            "onnx": reference.onnx,
            "gate": {"int8_passes": False, "error": "no int8 graph could be made"},
            "quantization": None,
            "ladder": ladder,
            "tried": tried,
        }
    settings, result = judged
    return {**result, "quantization": settings, "ladder": ladder, "tried": tried}


def gate(
    spec: ModelSpec, store: Path, ladder: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The gate's verdict for this model on this CPU (``judge_ladder`` over ``ladder``,
    default this CPU's schemes, ``export.quantization_ladder``: the first that passes
    serves), computed once and kept in ``gate.json``; judged again when the verdict was made
    for another ladder (a CPU with other features, a comparison of other settings, or a
    verdict that does not say) or the int8 graph that passed is gone. A model whose export
    or reference run fails is refused, and the error kept (delete the file to try again)."""
    ladder = ladder or quantization_ladder(cpu_features())
    with export_lock(spec, store):
        path = export_dir(spec, store) / GATE_FILE
        if path.is_file():
            verdict = dict(json.loads(path.read_text("utf-8")))
            settings = verdict.get("quantization")
            passed = bool(verdict.get("gate", {}).get("int8_passes"))
            graph_here = (
                isinstance(settings, dict)
                and quantized_with(export_dir(spec, store) / int8_file(settings)) == settings
            )
            if verdict.get("ladder") == ladder and (graph_here or not passed):
                return verdict
            log.warning(
                "int8 verdict of %s was judged with %s, this CPU quantises with %s: judging again",
                version_of(spec.path),
                verdict.get("ladder", settings),
                ladder,
            )
        try:
            result = judge_ladder(spec, store, ladder)
        except Exception as exc:  # no export, or no reference to judge against: refused
            log.exception("int8 of %s could not be judged", version_of(spec.path))
            error = f"{type(exc).__name__}: {exc}"
            result = {"gate": {"int8_passes": False, "error": error}, "quantization": None}
            result |= {"ladder": ladder, "tried": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, result)
        return result


def check_fp32(spec: ModelSpec, store: Path) -> dict[str, Any]:
    """Whether an ONNX fp32 graph of this model is exact, and which (``exact``, ``graph``,
    the figures; or the ``error`` that kept any from being made): exported and checked once
    per model version, under the export lock, kept in ``fp32.json``. The plain export and its
    optimised form (``export.optimize``) are both checked (``_check_graphs``); where the
    optimised one does not serve (it cannot be made, is not exact, or is not faster) the
    reason is logged and kept (``optimized``). An exact verdict that names no graph
    (made before the optimised one existed) is made again. Delete the file to try again."""
    path = export_dir(spec, store) / FP32_CHECK_FILE
    with export_lock(spec, store):
        if path.is_file():
            verdict = dict(json.loads(path.read_text("utf-8")))
            if not verdict.get("exact") or "graph" in verdict:
                return verdict
            log.warning(
                "ONNX fp32 verdict of %s names no graph: checking again", version_of(spec.path)
            )
        t0 = time.perf_counter()
        try:
            verdict = _check_graphs(spec, store)
        except Exception as exc:  # any failure to export or run it: torch serves
            log.exception("ONNX export of %s failed", version_of(spec.path))
            verdict = {"exact": False, "error": f"{type(exc).__name__}: {exc}"}
        verdict["seconds"] = round(time.perf_counter() - t0, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, verdict)
        return verdict


def _check_graphs(spec: ModelSpec, store: Path) -> dict[str, Any]:
    """Each fp32 graph (optimised, plain) checked on the check set and the exact ones timed
    there: the optimised graph serves if it is exact and at least ``OPT_MIN_GAIN`` faster
    than the plain one (or the plain one is not exact), else the plain one (its verdict, with
    every graph's figures under ``graphs``). Why the optimised graph does not serve is
    logged and kept (``optimized``)."""
    directory = export(spec, store)
    texts = sample_check_set().texts
    ref = SentenceTransformerEmbedder(spec).encode(texts)
    graphs: dict[str, dict[str, Any]] = {}
    embedders: dict[str, OnnxEmbedder] = {}
    fused: dict[str, int] = {}
    try:
        fused = optimize(spec, store)
        embedders[OPT_FILE] = OnnxEmbedder(spec, directory, int8=False, graph=OPT_FILE)
        graphs[OPT_FILE] = _exactness(embedders[OPT_FILE], texts, ref)
    except Exception as exc:  # the plain export may still be exact
        log.exception("optimising the ONNX export of %s failed", version_of(spec.path))
        graphs[OPT_FILE] = {"exact": False, "error": f"{type(exc).__name__}: {exc}"}
    embedders[FP32_FILE] = OnnxEmbedder(spec, directory, int8=False)
    graphs[FP32_FILE] = _exactness(embedders[FP32_FILE], texts, ref)
    exact = {g: e for g, e in embedders.items() if graphs[g]["exact"]}
    for graph, seconds in _timings(exact, texts[:TIMING_TEXTS]).items():
        graphs[graph]["s"] = seconds
    opt, plain = graphs[OPT_FILE], graphs[FP32_FILE]
    faster = opt["exact"] and (not plain["exact"] or opt["s"] <= plain["s"] * (1 - OPT_MIN_GAIN))
    served = OPT_FILE if faster else FP32_FILE
    verdict = {**graphs[served], "graph": served, "graphs": graphs, "fused": fused}
    if not faster:
        (directory / OPT_FILE).unlink(missing_ok=True)  # a second model-sized file, unused
        if "error" in opt:
            reason = str(opt["error"])
        elif opt["exact"]:
            reason = f"not {OPT_MIN_GAIN:.0%} faster: {opt['s']} s vs {plain['s']} s"
        else:
            reason = f"mean cosine to torch {opt['cosine_to_torch_mean']}"
        verdict["optimized"] = {"served": False, "reason": reason}
        log.warning(
            "optimised ONNX graph of %s not served (%s): the plain export serves where exact",
            version_of(spec.path),
            reason,
        )
    return verdict


def _exactness(embedder: OnnxEmbedder, texts: list[str], ref: np.ndarray) -> dict[str, Any]:
    """The graph's vectors against torch's (``ref``) on the check set's texts."""
    cos = np.sum(embedder.encode(texts) * ref, axis=1)
    return {
        "exact": bool(cos.mean() >= FP32_MIN_COSINE),
        "cosine_to_torch_mean": round(float(cos.mean()), 6),
        "cosine_to_torch_min": round(float(cos.min()), 6),
        "min_cosine": FP32_MIN_COSINE,
        "texts": len(texts),
    }


def _timings(embedders: dict[str, OnnxEmbedder], texts: list[str]) -> dict[str, float]:
    """Seconds each embedder takes to encode ``texts``: the fastest of ``TIMING_ROUNDS``
    rounds, the embedders taking turns, so that other work on the machine while a version is
    checked falls on each alike and the least disturbed round counts."""
    best = dict.fromkeys(embedders, float("inf"))
    for _ in range(TIMING_ROUNDS):
        for graph, embedder in embedders.items():
            t0 = time.perf_counter()
            embedder.encode(texts)
            best[graph] = min(best[graph], time.perf_counter() - t0)
    return {graph: round(seconds, 3) for graph, seconds in best.items()}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def refusal(spec_version: str, verdict: dict[str, Any]) -> QualityGateError:
    """Why the gate refused int8 for ``spec_version``, in the verdict's own numbers."""
    int8 = verdict.get("onnx-int8")
    figures = (
        f"check-set Spearman {int8['spearman']} vs fp32 {verdict['torch']['spearman']} "
        f"(allowed ±{GATE_MAX_DROP}), mean cosine to fp32 {int8['cosine_to_torch_mean']} "
        f"(at least {GATE_MIN_COSINE})"
        if int8 is not None
        else str(verdict["gate"].get("error"))
    )
    return QualityGateError(
        f"int8 backend refused for {spec_version}: {figures}; schemes tried:"
        f" {', '.join(_schemes(verdict))}; serving torch fp32"
    )


def _schemes(verdict: dict[str, Any]) -> list[str]:
    """The int8 schemes a verdict tried, in order (with the error of one that could not be
    made)."""
    return [
        str(t["quantization"].get("scheme")) + (f" ({t['error']})" if "error" in t else "")
        for t in verdict.get("tried", [])
    ]
