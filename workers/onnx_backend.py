"""ONNX backends for CPU workers: fp32 (onnxruntime) and dynamic int8 (onnxruntime's
``quantize_dynamic``), with a quality gate for the quantised one.

Why not sentence-transformers' ``backend="onnx"``: it needs ``optimum-onnx``, whose only
release (0.1.0) requires transformers < 4.58, while this project is locked to transformers
5.24 (sentence-transformers 6.2). So the export is done here with torch's exporter, of the
whole sentence-transformers pipeline (transformer, pooling, any trained Dense head,
normalisation) as one graph, and run with onnxruntime.

Exports live in ``<model store>/onnx/<version>/`` (``model.onnx``, ``model_qint8.onnx``,
``gate.json``), made once, atomically (a temporary directory renamed into place).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobfit.workers.model import (
    BaseEmbedder,
    ModelSpec,
    SentenceTransformerEmbedder,
    pack_by_tokens,
    version_of,
)

log = logging.getLogger(__name__)

OPSET = 17
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
GATE_FILE = "gate.json"
# How far a quantised backend's check-set Spearman may be from fp32's (either way) to serve.
GATE_MAX_DROP = 0.005
# ...and how close its vectors must stay to fp32's (mean cosine). The Spearman of an untuned
# model on 816 matches is a weak check on its own: measured, int8 mpnet moved Spearman by
# only 0.007 while its vectors' cosine to fp32 fell to 0.86 on average (MiniLM: 0.993).
GATE_MIN_COSINE = 0.98


class QualityGateError(RuntimeError):
    """The int8 backend's check-set Spearman is too far below fp32's."""


def export_dir(spec: ModelSpec, store: Path) -> Path:
    return store / "onnx" / version_of(spec.path)


def export(spec: ModelSpec, store: Path) -> Path:
    """The fp32 ONNX graph of the model (exported once): input ids and attention mask (and
    token type ids where the tokenizer makes them) -> L2-normalised sentence embedding."""
    out = export_dir(spec, store)
    if (out / FP32_FILE).is_file():
        return out
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(spec.path), device="cpu", local_files_only=True)
    model.max_seq_length = spec.max_seq_length
    model.eval()
    sample = model.tokenize(["Skills: Python, SQL", "Job title: Data Engineer"])
    names: list[str] = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            emb = self.model(dict(zip(names, inputs, strict=True)))["sentence_embedding"]
            return torch.nn.functional.normalize(emb, p=2, dim=1)

    tmp = out.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        with torch.inference_mode():
            torch.onnx.export(
                Graph(),
                tuple(sample[n] for n in names),
                str(tmp / FP32_FILE),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names},
                opset_version=OPSET,
                dynamo=False,
            )
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "inputs.json").write_text(json.dumps(names), encoding="utf-8")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def quantize(spec: ModelSpec, store: Path) -> Path:
    """The int8 graph next to the fp32 one: onnxruntime's pre-processing (graph optimisation,
    shape inference), then dynamic int8 quantisation of the weights, per channel. Measured
    on MiniLM (2 cores, check-set texts): 351 sentences/s with every supported op type
    quantised vs 293 with MatMul only, same cosine to fp32 (0.9925)."""
    out = export(spec, store)
    if (out / INT8_FILE).is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The quantiser's helpers may leave files in the working directory (shape inference's
    # "sym_shape_infer_temp.onnx" and its external data): they all run in a scratch dir.
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=out) as scratch:
        pre, tmp = Path(scratch) / "pre.onnx", Path(scratch) / "int8.onnx"
        with contextlib.chdir(scratch):
            # Symbolic shape inference does not complete on these graphs: skipped.
            quant_pre_process(str(out / FP32_FILE), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        os.replace(tmp, out / INT8_FILE)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; another process that got there first wins."""
    try:
        tmp.rename(out)
    except OSError:
        if not (out / FP32_FILE).is_file():
            raise


class OnnxEmbedder(BaseEmbedder):
    """An exported model run by onnxruntime on the CPU; same interface and packing as the
    torch embedder. Its version names the backend: its vectors differ (slightly) from the
    torch ones, so they are cached and scored under their own version."""

    def __init__(self, spec: ModelSpec, directory: Path, *, int8: bool) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        super().__init__()
        self.spec = spec
        self._base = version_of(spec.path)
        self._version = f"{self._base}+{'onnx-int8' if int8 else 'onnx'}"
        self._names: list[str] = json.loads((directory / "inputs.json").read_text("utf-8"))
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        options = ort.SessionOptions()
        if spec.threads:
            options.intra_op_num_threads = spec.threads
        self._session = ort.InferenceSession(
            str(directory / (INT8_FILE if int8 else FP32_FILE)),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._dim = int(self._run({n: self._tokens(["dim"])[n] for n in self._names}).shape[1])
        log.info("loaded %s from %s", self._version, directory)

    def _tokens(self, texts: list[str]) -> Any:
        return self._tokenizer(texts, truncation=True, max_length=self.spec.max_seq_length)

    def _run(self, tokens: dict[str, list[list[int]]]) -> np.ndarray:
        """One forward pass: the texts' token ids, padded to the longest."""
        enc = self._tokenizer.pad(tokens, padding=True, return_tensors="np")
        feeds = {n: enc[n].astype(np.int64) for n in self._names}
        return np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Tokenized once; the passes are packed from those lengths and padded per pass."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        enc = self._tokens(texts)
        lengths = [len(x) for x in enc["input_ids"]]
        spec = self.spec
        for idx in pack_by_tokens(lengths, spec.token_budget, spec.batch_size, spec.pass_overhead):
            out[idx] = self._run({n: [enc[n][i] for i in idx] for n in self._names})
        return out


# --- the quality gate -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSet:
    """Labelled matches with their field texts: the fixed check set (the bundled sample's
    labels) that a backend is judged on."""

    texts: list[str]
    matches: list[tuple[dict[str, str], dict[str, str], float]]


def sample_check_set() -> CheckSet:
    from jobfit.shared.client import read_documents
    from jobfit.shared.fields import field_texts
    from jobfit.shared.sample import SAMPLE_DIR, load_labels
    from jobfit.shared.schemas import JobDocument, ResumeDocument

    resumes = {
        d["id"]: field_texts(ResumeDocument.model_validate(d))
        for d in read_documents(SAMPLE_DIR / "resumes.jsonl")
    }
    jobs = {
        d["id"]: field_texts(JobDocument.model_validate(d))
        for d in read_documents(SAMPLE_DIR / "jobs.jsonl")
    }
    matches = [
        ({p.value: t for p, t in resumes[r].items()}, {p.value: t for p, t in jobs[j].items()}, y)
        for (r, j), y in sorted(load_labels(SAMPLE_DIR / "labels.csv").items())
        if r in resumes and j in jobs
    ]
    texts = sorted({t for m in matches for side in m[:2] for t in side.values()})
    return CheckSet(texts=texts, matches=matches)


def judge(embedder: Any, check: CheckSet) -> tuple[dict[str, float], np.ndarray]:
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


def make_embedder(spec: ModelSpec, store: Path) -> Any:
    """The embedder for ``spec.backend``. ``onnx-int8`` serves only if it passed the gate;
    otherwise the worker serves fp32 torch and says why (a QualityGateError is logged)."""
    if spec.backend == "onnx":
        return OnnxEmbedder(spec, export(spec, store), int8=False)
    if spec.backend == "onnx-int8":
        verdict = gate(spec, store)
        if verdict["gate"]["int8_passes"]:
            return OnnxEmbedder(spec, quantize(spec, store), int8=True)
        log.error(
            "%s",
            QualityGateError(
                f"int8 backend refused for {version_of(spec.path)}: check-set Spearman "
                f"{verdict['onnx-int8']['spearman']} vs fp32 {verdict['torch']['spearman']} "
                f"(allowed ±{GATE_MAX_DROP}), mean cosine to fp32 "
                f"{verdict['onnx-int8']['cosine_to_torch_mean']} (at least {GATE_MIN_COSINE}); "
                "serving torch fp32"
            ),
        )
    return SentenceTransformerEmbedder(spec)
