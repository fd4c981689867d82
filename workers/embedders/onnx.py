"""The onnx backend: an exported model (``embedders.export``) run by onnxruntime on the
CPU, fp32 or int8; same interface and packing as the torch backend.

The session's threads do not spin while they wait for work (``session_options``): a worker's
batches run in a thread beside its event loop and Postgres on the same cores, the reason
torch's OpenMP threads are set to sleep too (``OMP_WAIT_POLICY=PASSIVE``). Measured on
2 shared cores (MiniLM, the check set, best of 4 rounds in one run, load average 4.7): 0.58x
torch's speed with onnxruntime's default spinning, 0.98x without.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from jobfit.shared.model_store import version_of
from jobfit.workers.embedders.base import BaseEmbedder, ModelSpec
from jobfit.workers.embedders.export import (
    FP32_FILE,
    OPT_FILE,
    cpu_features,
    int8_file,
    quantization_settings,
)
from jobfit.workers.embedders.packing import pack_by_tokens

log = logging.getLogger(__name__)


class OnnxEmbedder(BaseEmbedder):
    """An exported model run by onnxruntime on the CPU. Its version names the backend: its
    vectors differ (slightly) from the torch ones, so they are cached and scored under their
    own version."""

    def __init__(
        self, spec: ModelSpec, directory: Path, *, int8: bool, graph: str | None = None
    ) -> None:
        """``graph``: the file in ``directory`` to run (default: the plain fp32 export, or the
        int8 graph of this CPU's first scheme; ``export.OPT_FILE``: the optimised fp32 graph,
        once it passed its check; ``export.int8_file(settings)``: an int8 graph)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        super().__init__()
        self.spec = spec
        self._base = version_of(spec.path)
        if graph is None:
            graph = int8_file(quantization_settings(cpu_features())) if int8 else FP32_FILE
        self.graph = graph  # int8: the caller names the graph that passed (``select``)
        # The optimised graph's vectors differ from the plain one's in the last bits, and
        # which of the two serves is measured per store: each caches under its own version.
        self.backend = "onnx-int8" if int8 else "onnx-opt" if self.graph == OPT_FILE else "onnx"
        self._version = f"{self._base}+{self.backend}"
        self._names: list[str] = json.loads((directory / "inputs.json").read_text("utf-8"))
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        self._session = ort.InferenceSession(
            str(directory / self.graph),
            sess_options=session_options(spec),
            providers=["CPUExecutionProvider"],
        )
        self._dim = int(self._run({n: self._tokens(["dim"])[n] for n in self._names}).shape[1])
        log.info("loaded %s from %s", self._version, directory / self.graph)

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


def session_options(spec: ModelSpec) -> Any:
    """Every graph optimisation, operators one after another (their parallelism is within
    each operator: ``spec.threads``, or onnxruntime's default of one thread per physical
    core), and threads that sleep instead of spinning while they wait for work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spec.threads:
        options.intra_op_num_threads = spec.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
