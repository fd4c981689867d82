"""ONNX backends: fp32 equals torch and is the CPU default only where its export is exact
(the optimised graph too, served where it is exact and faster, the plain one otherwise),
int8 stays close, serves only past its gate and is judged again on a CPU with other features,
and a worker serving either names the backend in every row's model version."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from jobfit.shared.client import JobfitClient
from jobfit.shared.model_store import base_version, version_of
from jobfit.shared.orm import ModelVersionRow
from jobfit.shared.repository import ModelStatus
from jobfit.workers.embedders import gate as gate_module
from jobfit.workers.embedders.base import ModelSpec
from jobfit.workers.embedders.export import (
    FP32_FILE,
    OPT_FILE,
    cpu_features,
    export_dir,
    int8_file,
    narrowing_matmuls,
    quantization_ladder,
    quantization_settings,
    quantize,
    quantized_with,
)
from jobfit.workers.embedders.gate import (
    FP32_CHECK_FILE,
    GATE_FILE,
    check_fp32,
    gate,
    sample_check_set,
)
from jobfit.workers.embedders.onnx import OnnxEmbedder, session_options
from jobfit.workers.embedders.select import make_embedder
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder
from tests.conftest import isolated
from tools.procs import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def one_timing_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graphs' timing decides which serves, not what these tests check: one round."""
    monkeypatch.setattr(gate_module, "TIMING_ROUNDS", 1)


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
    # The careful scheme (the down-projections in fp32): a graph of its own, as close.
    careful = quantization_settings(cpu_features(), "ffn-down-fp32")
    graph = int8_file(careful)
    down = OnnxEmbedder(spec, quantize(spec, onnx_store, careful), int8=True, graph=graph)
    assert quantized_with(directory / graph) == careful
    assert int8.graph == int8_file(quantization_settings(cpu_features())) != graph
    cos_down = np.sum(down.encode(texts) * ref, axis=1)
    assert cos_down.mean() > 0.98 and cos_down.min() > 0.95, (cos_down.mean(), cos_down.min())
    assert fp32.version == f"{version_of(spec.path)}+onnx"
    assert int8.version == f"{version_of(spec.path)}+onnx-int8"
    assert base_version(int8.version) == version_of(spec.path)
    assert fp32.encode([]).shape == (0, fp32.dim)


def test_int8_serves_only_if_it_passed_the_gate(spec, onnx_store):
    verdict = gate(spec, onnx_store)
    assert set(verdict) == {"torch", "onnx", "onnx-int8", "gate", "quantization", "ladder", "tried"}
    assert verdict["quantization"]["cpu_features"] == cpu_features()
    assert verdict["ladder"] == quantization_ladder(cpu_features())
    assert verdict["quantization"] == verdict["tried"][-1]["quantization"]
    assert [t["passes"] for t in verdict["tried"][:-1]] == [False] * (len(verdict["tried"]) - 1)
    assert verdict["onnx"]["spearman_drop"] == pytest.approx(0.0, abs=1e-3)
    int8_spec = ModelSpec(**{**spec.__dict__, "backend": "onnx-int8"})
    path = export_dir(spec, onnx_store) / GATE_FILE
    for passes, expected in ((False, SentenceTransformerEmbedder), (True, OnnxEmbedder)):
        verdict["gate"]["int8_passes"] = passes
        path.write_text(json.dumps(verdict), encoding="utf-8")
        assert type(make_embedder(int8_spec, onnx_store)) is expected


def test_cpu_default_is_onnx_fp32_where_exact_torch_otherwise(spec, onnx_store, tmp_path):
    auto = ModelSpec(**{**spec.__dict__, "backend": "auto"})
    verdict = check_fp32(auto, onnx_store)
    assert verdict["exact"] and verdict["cosine_to_torch_mean"] >= 0.9999, verdict
    assert type(make_embedder(auto, onnx_store)) is OnnxEmbedder
    path = quantize(spec, onnx_store) / FP32_CHECK_FILE
    path.write_text(json.dumps({**verdict, "exact": False}), encoding="utf-8")  # forced inexact
    try:
        assert type(make_embedder(auto, onnx_store)) is SentenceTransformerEmbedder
    finally:
        path.write_text(json.dumps(verdict), encoding="utf-8")


def test_cpu_default_is_torch_where_the_export_fails(spec, tmp_path, monkeypatch):
    def broken(*_: object) -> Path:
        raise RuntimeError("this model cannot be exported")

    monkeypatch.setattr(gate_module, "export", broken)
    auto = ModelSpec(**{**spec.__dict__, "backend": "auto"})
    assert type(make_embedder(auto, tmp_path)) is SentenceTransformerEmbedder
    verdict = check_fp32(auto, tmp_path)  # recorded once: not tried again at every load
    assert not verdict["exact"] and "cannot be exported" in verdict["error"]


def copied_store(spec: ModelSpec, onnx_store: Path, tmp_path: Path) -> Path:
    """A store with the module's export in it and no fp32 verdict: checked afresh."""
    store = tmp_path / "store"
    shutil.copytree(export_dir(spec, onnx_store), export_dir(spec, store))
    (export_dir(spec, store) / FP32_CHECK_FILE).unlink(missing_ok=True)
    return store


def test_optimised_graph_stays_within_the_exactness_gate(spec, onnx_store, tmp_path):
    store = copied_store(spec, onnx_store, tmp_path)
    auto = ModelSpec(**{**spec.__dict__, "backend": "auto"})
    verdict = check_fp32(auto, store)
    opt = verdict["graphs"][OPT_FILE]
    # onnxruntime's fusions took hold of MiniLM's export (eager attention), and stay exact.
    assert verdict["fused"]["Attention"] == 6 and verdict["fused"]["SkipLayerNormalization"]
    assert opt["exact"] and opt["cosine_to_torch_min"] >= 0.9999, verdict
    assert verdict["exact"] and verdict["graph"] in (OPT_FILE, FP32_FILE)
    assert ("optimized" in verdict) == (verdict["graph"] == FP32_FILE)
    served = make_embedder(auto, store)
    assert isinstance(served, OnnxEmbedder) and served.graph == verdict["graph"]
    directory = export_dir(spec, store)
    # An optimised graph that does not serve is not kept (a second model-sized file).
    assert (directory / OPT_FILE).is_file() == (verdict["graph"] == OPT_FILE)
    # Where it serves (faster on the check set), the worker runs the optimised graph, and
    # caches its vectors under a version of their own.
    gate_module.optimize(spec, store)
    path = directory / FP32_CHECK_FILE
    path.write_text(json.dumps({**verdict, "graph": OPT_FILE}), encoding="utf-8")
    served = make_embedder(auto, store)
    assert isinstance(served, OnnxEmbedder) and served.graph == OPT_FILE
    assert served.version.endswith("+onnx-opt")
    # A verdict naming anything else, or a graph that is not there: the plain export.
    for graph in ("../../elsewhere.onnx", "model_int8.onnx"):
        path.write_text(json.dumps({**verdict, "graph": graph}), encoding="utf-8")
        plain = make_embedder(auto, store)
        assert isinstance(plain, OnnxEmbedder) and plain.graph == FP32_FILE
        assert plain.version.endswith("+onnx")
    texts = sample_check_set().texts[:40]
    cos = np.sum(served.encode(texts) * SentenceTransformerEmbedder(spec).encode(texts), axis=1)
    assert cos.min() >= 0.9999
    # Its threads sleep while they wait: the worker's event loop shares the cores.
    assert session_options(spec).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_failed_optimisation_serves_the_plain_export_and_says_why(
    spec, onnx_store, tmp_path, monkeypatch, caplog
):
    def broken(*_: object) -> dict[str, int]:
        raise RuntimeError("fusion went wrong")

    monkeypatch.setattr(gate_module, "optimize", broken)
    store = copied_store(spec, onnx_store, tmp_path)
    auto = ModelSpec(**{**spec.__dict__, "backend": "auto"})
    with caplog.at_level(logging.WARNING, logger=gate_module.__name__):
        verdict = check_fp32(auto, store)
    assert verdict["exact"] and verdict["graph"] == FP32_FILE, verdict
    assert "fusion went wrong" in verdict["optimized"]["reason"]
    assert "fusion went wrong" in verdict["graphs"][OPT_FILE]["error"]
    assert any(
        "not served" in r.getMessage() and "fusion went wrong" in r.getMessage()
        for r in caplog.records
    )
    served = make_embedder(auto, store)
    assert isinstance(served, OnnxEmbedder) and served.graph == FP32_FILE


def test_exact_verdict_naming_no_graph_is_checked_again(spec, onnx_store, tmp_path, monkeypatch):
    store = copied_store(spec, onnx_store, tmp_path)
    path = export_dir(spec, store) / FP32_CHECK_FILE
    old = {"exact": True, "cosine_to_torch_mean": 1.0}  # as written before the optimised graph
    path.write_text(json.dumps(old), encoding="utf-8")
    checked: list[int] = []

    def check(*_: object) -> dict[str, object]:
        checked.append(1)
        return {"exact": True, "graph": FP32_FILE}

    monkeypatch.setattr(gate_module, "_check_graphs", check)
    auto = ModelSpec(**{**spec.__dict__, "backend": "auto"})
    assert check_fp32(auto, store)["graph"] == FP32_FILE and checked == [1]
    assert check_fp32(auto, store)["graph"] == FP32_FILE and checked == [1]  # kept
    path.write_text(json.dumps({"exact": False, "error": "x"}), encoding="utf-8")
    assert check_fp32(auto, store) == {"exact": False, "error": "x"}  # refusals stay


@pytest.fixture()
def fresh_verdict(spec: ModelSpec, onnx_store: Path) -> Iterator[None]:
    """No kept verdict before the test, none after it (the module shares one store)."""
    path = export_dir(spec, onnx_store) / GATE_FILE
    path.unlink(missing_ok=True)
    yield
    path.unlink(missing_ok=True)


def judged_by_scheme(
    monkeypatch: pytest.MonkeyPatch, passing: set[str], broken: Collection[str] = ()
) -> list[str]:
    """The gate's judgement stood in for: int8 made with each settings judged, as ``compare``
    makes it, passing for the schemes in ``passing``, raising for those in ``broken``;
    returns the schemes judged, in order."""
    judged: list[str] = []

    def compare(spec, store, check=None, quantization=None, reference=None):
        judged.append(quantization["scheme"])
        if quantization["scheme"] in broken:
            raise RuntimeError("the quantiser failed")
        quantize(spec, store, quantization)
        return {"onnx-int8": {}, "gate": {"int8_passes": quantization["scheme"] in passing}}

    monkeypatch.setattr(gate_module, "compare", compare)
    monkeypatch.setattr(gate_module.Reference, "of", classmethod(lambda cls, *_: _reference()))
    return judged


def _reference() -> gate_module.Reference:
    return gate_module.Reference(sample_check_set(), {"spearman": 0.3}, np.zeros(1), {})


def test_stale_or_foreign_cpu_int8_verdict_is_judged_again(
    spec, onnx_store, monkeypatch, fresh_verdict
):
    directory = quantize(spec, onnx_store)
    here = quantization_ladder(cpu_features())
    judged = judged_by_scheme(monkeypatch, passing=set())
    foreign = quantization_ladder([f for f in cpu_features() if "vnni" not in f and "amx" not in f])
    foreign = foreign if foreign != here else quantization_ladder(["avx512_vnni"])
    # A verdict judged on a CPU with other features (its ladder says so), even a passing
    # one: judged again here, every scheme in turn (none passes here), each its own graph.
    (directory / GATE_FILE).write_text(
        json.dumps({"quantization": foreign[0], "ladder": foreign, "gate": {"int8_passes": True}}),
        encoding="utf-8",
    )
    verdict = gate(spec, onnx_store)
    assert verdict["ladder"] == here and verdict["quantization"] == here[-1]
    assert judged == ["all", "ffn-down-fp32"]
    assert all(quantized_with(directory / int8_file(q)) == q for q in here)
    # A verdict that does not say what it was judged with (stale): judged again.
    (directory / GATE_FILE).write_text(json.dumps({"gate": {}}), encoding="utf-8")
    assert gate(spec, onnx_store)["quantization"] == here[-1]
    assert len(judged) == 4
    assert gate(spec, onnx_store)["quantization"] == here[-1] and len(judged) == 4  # kept
    # A refusal does not need its graphs: kept without them.
    for q in here:
        (directory / int8_file(q)).unlink()
    assert gate(spec, onnx_store)["gate"]["int8_passes"] is False and len(judged) == 4


def test_the_first_scheme_that_passes_serves(spec, onnx_store, monkeypatch, fresh_verdict):
    fp32 = export_dir(spec, onnx_store) / FP32_FILE
    down = narrowing_matmuls(fp32)
    # MiniLM has 6 layers: one down-projection each.
    assert len(down) == 6 and all("output/dense" in n for n in down), down
    # The first scheme cannot be made here: refused with its error, the next one judged.
    judged = judged_by_scheme(monkeypatch, passing={"all", "ffn-down-fp32"}, broken={"all"})
    verdict = gate(spec, onnx_store)
    assert judged == ["all", "ffn-down-fp32"]
    assert [(t["quantization"]["scheme"], t["passes"]) for t in verdict["tried"]] == [
        ("all", False),
        ("ffn-down-fp32", True),
    ]
    assert "the quantiser failed" in verdict["tried"][0]["error"]
    int8_spec = ModelSpec(**{**spec.__dict__, "backend": "onnx-int8"})
    graph = export_dir(spec, onnx_store) / int8_file(verdict["quantization"])
    made = graph.stat().st_mtime_ns
    # Another scheme's graph made meanwhile (a comparison, a CPU with other features
    # sharing the store) changes nothing for the one that passed.
    other = quantization_settings(cpu_features(), "all")
    quantize(spec, onnx_store, {**other, "reduce_range": not other["reduce_range"]})
    served = make_embedder(int8_spec, onnx_store)
    assert type(served) is OnnxEmbedder and judged == ["all", "ffn-down-fp32"]  # kept
    assert served.graph == graph.name
    assert quantized_with(graph) == verdict["quantization"]
    assert graph.stat().st_mtime_ns == made, "the graph that passed serves: not made again"
    # The graph that passed is gone: judged again (and made again), before anything serves.
    graph.unlink()
    assert type(make_embedder(int8_spec, onnx_store)) is OnnxEmbedder
    assert judged == ["all", "ffn-down-fp32"] * 2 and graph.is_file()


def test_a_ladder_none_of_which_can_be_made_is_refused_with_the_errors(
    spec, onnx_store, monkeypatch, fresh_verdict
):
    judged = judged_by_scheme(monkeypatch, passing=set(), broken={"all", "ffn-down-fp32"})
    verdict = gate(spec, onnx_store)
    assert verdict["gate"]["int8_passes"] is False and verdict["quantization"] is None
    assert all("the quantiser failed" in t["error"] for t in verdict["tried"])
    int8_spec = ModelSpec(**{**spec.__dict__, "backend": "onnx-int8"})
    assert type(make_embedder(int8_spec, onnx_store)) is SentenceTransformerEmbedder
    assert len(judged) == 2, "the refusal is kept: not judged again at each load"
    assert "the quantiser failed" in str(gate_module.refusal("v", verdict))


def test_a_model_whose_reference_cannot_be_run_is_refused_and_kept(
    spec, onnx_store, monkeypatch, fresh_verdict
):
    def broken(*_: object) -> None:
        raise OSError("no such tokenizer")

    monkeypatch.setattr(gate_module.Reference, "of", classmethod(broken))
    verdict = gate(spec, onnx_store)
    assert verdict["gate"]["int8_passes"] is False
    assert "no such tokenizer" in verdict["gate"]["error"]
    int8_spec = ModelSpec(**{**spec.__dict__, "backend": "onnx-int8"})
    assert type(make_embedder(int8_spec, onnx_store)) is SentenceTransformerEmbedder


def serve_one(settings, store: Path, backend: str, log_path: Path) -> dict:
    """Ingest one resume with a worker of its own (its own queues: the session's torch worker
    must not take these messages) serving ``backend``; the ingest result."""
    own, app = isolated(settings, backend, backend=backend, store=store)
    client = JobfitClient(app=app)
    w = WorkerProcess(own, app, backend, log_path)
    w.start()
    try:
        client.submit_job({"id": "j1", "title": "Data Engineer", "skills_required": ["SQL"]})
        return dict(
            client.submit_resume({"id": "r1", "skills": ["SQL", "Python"]}).get(timeout=120)
        )
    finally:
        w.stop()


def test_worker_on_auto_serves_onnx_fp32(settings, clean_db, spec, onnx_store, tmp_path):
    out = serve_one(settings, onnx_store, "auto", tmp_path / "auto.log")
    # Either exact fp32 graph: the optimised one serves where it timed >= 5 % faster on this
    # machine at export (it did in one clean-clone CI run, not in others).
    base = version_of(spec.path)
    assert out["model_version"] in (f"{base}+onnx", f"{base}+onnx-opt")


def test_worker_on_int8_names_the_backend(
    settings, clean_db, session_factory, spec, onnx_store, tmp_path
):
    verdict = gate(spec, onnx_store)
    verdict["gate"]["int8_passes"] = True  # this test is about serving, not the verdict
    (quantize(spec, onnx_store) / GATE_FILE).write_text(json.dumps(verdict), encoding="utf-8")
    out = serve_one(settings, onnx_store, "onnx-int8", tmp_path / "int8.log")
    assert out["model_version"] == f"{version_of(spec.path)}+onnx-int8"
    with session_factory() as s:
        row = s.execute(
            select(ModelVersionRow).where(ModelVersionRow.version == out["model_version"])
        ).scalar_one()
    assert row.status == ModelStatus.VARIANT and row.parent_version == version_of(spec.path)
    assert row.params == {"backend": "onnx-int8"}
