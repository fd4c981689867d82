"""ONNX backends: fp32 equals torch, int8 stays close, int8 serves only past its gate, and a
worker serving it names the backend in every row's model version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from jobfit.shared.client import JobfitClient
from jobfit.shared.model_store import base_version, version_of
from jobfit.shared.orm import ModelVersionRow
from jobfit.shared.repository import ModelStatus
from jobfit.workers.embedders.base import ModelSpec
from jobfit.workers.embedders.export import quantize
from jobfit.workers.embedders.gate import GATE_FILE, gate, sample_check_set
from jobfit.workers.embedders.onnx import OnnxEmbedder
from jobfit.workers.embedders.select import make_embedder
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder
from tests.conftest import isolated
from tools.procs import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spec(minilm_path: Path) -> ModelSpec:
    return ModelSpec(path=minilm_path, name="minilm", device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def onnx_store(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("onnx-store")
    quantize(spec, store)  # exports fp32, then int8 (once for the module)
    return store


def test_fp32_equals_torch_and_int8_stays_close(spec, onnx_store):
    texts = sample_check_set().texts[:80]
    ref = SentenceTransformerEmbedder(spec).encode(texts)
    directory = quantize(spec, onnx_store)
    fp32 = OnnxEmbedder(spec, directory, int8=False)
    int8 = OnnxEmbedder(spec, directory, int8=True)
    cos32 = np.sum(fp32.encode(texts) * ref, axis=1)
    cos8 = np.sum(int8.encode(texts) * ref, axis=1)
    assert cos32.min() > 0.9999
    assert cos8.mean() > 0.98 and cos8.min() > 0.95, (cos8.mean(), cos8.min())
    assert fp32.version == f"{version_of(spec.path)}+onnx"
    assert int8.version == f"{version_of(spec.path)}+onnx-int8"
    assert base_version(int8.version) == version_of(spec.path)
    assert fp32.encode([]).shape == (0, fp32.dim)


def test_int8_serves_only_if_it_passed_the_gate(spec, onnx_store):
    verdict = gate(spec, onnx_store)
    assert set(verdict) == {"torch", "onnx", "onnx-int8", "gate"}
    assert verdict["onnx"]["spearman_drop"] == pytest.approx(0.0, abs=1e-3)
    int8_spec = ModelSpec(**{**spec.__dict__, "backend": "onnx-int8"})
    path = quantize(spec, onnx_store) / GATE_FILE
    for passes, expected in ((False, SentenceTransformerEmbedder), (True, OnnxEmbedder)):
        verdict["gate"]["int8_passes"] = passes
        path.write_text(json.dumps(verdict), encoding="utf-8")
        assert type(make_embedder(int8_spec, onnx_store)) is expected


def test_worker_on_int8_names_the_backend(
    settings, clean_db, session_factory, spec, onnx_store, tmp_path
):
    verdict = gate(spec, onnx_store)
    verdict["gate"]["int8_passes"] = True  # this test is about serving, not the verdict
    (quantize(spec, onnx_store) / GATE_FILE).write_text(json.dumps(verdict), encoding="utf-8")
    # Its own queues (key prefix): the session's torch worker must not take these messages.
    own, app = isolated(settings, "int8", backend="onnx-int8", store=onnx_store)
    client = JobfitClient(app=app)
    w = WorkerProcess(own, app, "int8", tmp_path / "int8.log")
    w.start()
    try:
        client.submit_job({"id": "j1", "title": "Data Engineer", "skills_required": ["SQL"]})
        out = client.submit_resume({"id": "r1", "skills": ["SQL", "Python"]}).get(timeout=120)
    finally:
        w.stop()
    assert out["model_version"] == f"{version_of(spec.path)}+onnx-int8"
    with session_factory() as s:
        row = s.execute(
            select(ModelVersionRow).where(ModelVersionRow.version == out["model_version"])
        ).scalar_one()
    assert row.status == ModelStatus.VARIANT and row.parent_version == version_of(spec.path)
    assert row.params == {"backend": "onnx-int8"}
