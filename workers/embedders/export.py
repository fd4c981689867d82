"""The ONNX export of a model, and its dynamic int8 quantisation, for the onnx backend.

Why not sentence-transformers' ``backend="onnx"``: it needs ``optimum-onnx``, whose only
release (0.1.0) requires transformers < 4.58, while this project is locked to transformers
5.24 (sentence-transformers 6.2). So the export is done here with torch's exporter, of the
whole sentence-transformers pipeline (transformer, pooling, any trained Dense head,
normalisation) as one graph, and run with onnxruntime (``embedders.onnx``).

Exports live in ``<model store>/onnx/<version>/`` (``model.onnx``, its optimised form
``model_opt.onnx``, an int8 graph per quantisation settings ``model_qint8.<digest>.onnx``,
the fp32 check's ``fp32.json``, the gate's ``gate.json``), made once, atomically (the
export a temporary directory renamed into place; an int8 graph written aside and renamed,
after its settings), and under a file lock (``export_lock``) so that two workers loading the
same version do not export it twice.

The optimised graph (``optimize``) is the fp32 graph after onnxruntime's transformer fusions
(``onnxruntime.transformers.optimizer``: fused attention, embedding and skip LayerNorm, bias
GELU): the same arithmetic in fewer, larger kernels. It serves only if it passes the same
exactness check as the plain export (``gate.check_fp32``), which serves otherwise.

int8 quantisation depends on the CPU: without VNNI (or AMX) the int8 multiply-add
instructions can saturate on 8-bit weights, so the weights are quantised to 7 bits there
(onnxruntime's ``reduce_range``). The settings and the CPU features they were chosen for name
the int8 graph's file and are kept beside it; on a CPU with other features another graph is
made (and judged, see ``gate.gate``).

Which ops are quantised is a ladder of schemes, fastest first (``INT8_SCHEMES``); the gate
serves the first one that passes. ``all``: every op type onnxruntime quantises dynamically
(on these graphs: MatMul, Gather, Transpose). ``ffn-down-fp32``: MatMul weights only, and
the MatMuls whose weights narrow their input (the feed-forward down-projections) left in
fp32: their input, the GELU's output, has a few channels far larger than the rest, which one
per-tensor activation scale cannot resolve. Measured on mpnet's check set (AVX-512 VNNI):
``all`` 3.6x torch but cosine to fp32 0.859 (refused); MatMul only 0.861; the attention
projections or the up-projections or the first and last layers left in fp32, 0.860-0.865;
the down-projections left in fp32, **0.989** and Spearman within 0.002 (passes, 2.2x torch);
those of layers 6-11 only, 0.985 but Spearman 0.008 off (refused).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobfit.shared.model_store import version_of
from jobfit.workers.embedders.base import ModelSpec

OPSET = 17
FP32_FILE = "model.onnx"
OPT_FILE = "model_opt.onnx"
# onnxruntime's fusions for encoder-only transformers (BERT, MPNet, ...): the one model type
# of its optimizer for them. What it fused is kept in the fp32 check's verdict.
OPT_MODEL_TYPE = "bert"
# The CPU flags that decide how int8 runs (Linux /proc/cpuinfo names).
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
# Which ops are quantised, fastest first (the module's docstring says why).
INT8_SCHEMES = ("all", "ffn-down-fp32")


def export_dir(spec: ModelSpec, store: Path) -> Path:
    return store / "onnx" / version_of(spec.path)


@contextlib.contextmanager
def export_lock(spec: ModelSpec, store: Path) -> Iterator[None]:
    """Held while a version's exports are made or checked: one process at a time (an
    advisory ``flock``, released when the process dies)."""
    lock = store / "onnx" / f".{version_of(spec.path)}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cpu_features() -> list[str]:
    """The flags of ``CPU_FLAGS`` this CPU has."""
    try:
        text = Path("/proc/cpuinfo").read_text("utf-8")
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return [f for f in CPU_FLAGS if f in flags]


def quantization_settings(features: list[str], scheme: str = INT8_SCHEMES[0]) -> dict[str, Any]:
    """Dynamic int8 settings for a CPU with ``features``: 7-bit weights (``reduce_range``)
    where there is no VNNI / AMX to multiply 8-bit weights without saturating; per channel;
    the ops of ``scheme`` (``INT8_SCHEMES``)."""
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8 scheme {scheme!r}: one of {', '.join(INT8_SCHEMES)}")
    vnni = any(f in features for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return {
        "per_channel": True,
        "reduce_range": not vnni,
        "scheme": scheme,
        "cpu_features": features,
    }


def quantization_ladder(features: list[str]) -> list[dict[str, Any]]:
    """This CPU's settings of every scheme, in the order the gate tries them."""
    return [quantization_settings(features, scheme) for scheme in INT8_SCHEMES]


def narrowing_matmuls(path: Path) -> list[str]:
    """The MatMul nodes of the graph at ``path`` whose weights (a 2-D initializer) have more
    rows than columns: the feed-forward down-projections (and a Dense head that narrows)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(node.input) == 2
        and len(shape := shapes.get(node.input[1], [])) == 2
        and shape[0] > shape[1]
    ]


def export(spec: ModelSpec, store: Path) -> Path:
    """The fp32 ONNX graph of the model (exported once): input ids and attention mask (and
    token type ids where the tokenizer makes them) -> L2-normalised sentence embedding."""
    out = export_dir(spec, store)
    if (out / FP32_FILE).is_file():
        return out
    import torch
    from sentence_transformers import SentenceTransformer

    # Eager attention: its graph is the one onnxruntime's attention fusion recognises
    # (measured on MiniLM: 6 of 6 layers fused; none from the SDPA export). Same arithmetic.
    model = SentenceTransformer(
        str(spec.path),
        device="cpu",
        local_files_only=True,
        model_kwargs={"attn_implementation": "eager"},
    )
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


def optimize(spec: ModelSpec, store: Path) -> dict[str, int]:
    """The fp32 graph with onnxruntime's transformer fusions (``OPT_FILE``, next to it; made
    again at each call: ``gate.check_fp32`` calls it once per version, under the export
    lock). Returns what was fused (operator -> count). Raises whatever the optimizer raises:
    the caller then serves the plain graph."""
    out = export(spec, store)
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = attention_shape(spec)
    model = optimize_model(
        str(out / FP32_FILE), model_type=OPT_MODEL_TYPE, num_heads=heads, hidden_size=hidden
    )
    fused = {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}
    tmp = out / f".{uuid.uuid4().hex}.onnx"
    try:
        model.save_model_to_file(str(tmp))
        os.replace(tmp, out / OPT_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return fused


def attention_shape(spec: ModelSpec) -> tuple[int, int]:
    """Attention heads and hidden size from the model's transformer config; (0, 0) when it
    does not say (the optimizer then reads them off the graph, and fuses no attention where
    it cannot: measured on MiniLM's export)."""
    try:
        config = json.loads((spec.path / "config.json").read_text("utf-8"))
        return int(config["num_attention_heads"]), int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def int8_file(settings: dict[str, Any]) -> str:
    """The int8 graph's file name for ``settings``: one file per settings, made once and
    never replaced, so a graph that passed the gate is the one that serves whatever else is
    quantised in the same store (another scheme judged, a CPU with other features)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"model_qint8.{digest}.onnx"


def quantize(spec: ModelSpec, store: Path, settings: dict[str, Any] | None = None) -> Path:
    """The export's directory, with the int8 graph of ``settings`` (default:
    ``quantization_settings`` of this CPU) in it (``int8_file``; its settings beside it, in a
    ``.json`` of the same name): onnxruntime's pre-processing (graph optimisation, shape
    inference), then dynamic int8 quantisation of the weights. Measured on MiniLM (2 cores,
    check-set texts): 351 sentences/s with every supported op type quantised vs 293 with
    MatMul only, same cosine to fp32 (0.9925)."""
    out = export(spec, store)
    settings = settings or quantization_settings(cpu_features())
    graph = out / int8_file(settings)
    if quantized_with(graph) == settings:
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
            ops: dict[str, Any] = {}
            if settings.get("scheme", INT8_SCHEMES[0]) == "ffn-down-fp32":
                kept = narrowing_matmuls(pre)
                if not kept:
                    raise ValueError("no MatMul narrows its input: no down-projection to keep")
                ops = {"op_types_to_quantize": ["MatMul"], "nodes_to_exclude": kept}
            quantize_dynamic(
                str(pre),
                str(tmp),
                per_channel=settings["per_channel"],
                reduce_range=settings["reduce_range"],
                weight_type=QuantType.QInt8,
                **ops,
            )
        meta = Path(scratch) / "settings.json"
        meta.write_text(json.dumps(settings), encoding="utf-8")
        os.replace(meta, graph.with_suffix(".json"))  # the settings first: a graph has them
        os.replace(tmp, graph)
    return out


def quantized_with(graph: Path) -> dict[str, Any] | None:
    """The settings the int8 graph at ``graph`` was made with (None: no such graph)."""
    path = graph.with_suffix(".json")
    if not graph.is_file() or not path.is_file():
        return None
    return dict(json.loads(path.read_text("utf-8")))


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; another process that got there first wins."""
    try:
        tmp.rename(out)
    except OSError:
        if not (out / FP32_FILE).is_file():
            raise
