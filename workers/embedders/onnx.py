"""The onnx backend: an exported model (``embedders.export``) run by onnxruntime on the
CPU, fp32 or int8; same interface and packing as the torch backend."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from jobfit.shared.model_store import version_of
from jobfit.workers.embedders.base import BaseEmbedder, ModelSpec
from jobfit.workers.embedders.export import FP32_FILE, INT8_FILE
from jobfit.workers.embedders.packing import pack_by_tokens

log = logging.getLogger(__name__)


class OnnxEmbedder(BaseEmbedder):
    """An exported model run by onnxruntime on the CPU. Its version names the backend: its
    vectors differ (slightly) from the torch ones, so they are cached and scored under their
    own version."""

    def __init__(self, spec: ModelSpec, directory: Path, *, int8: bool) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        super().__init__()
        self.spec = spec
        self._base = version_of(spec.path)
        self.backend = "onnx-int8" if int8 else "onnx"
        self._version = f"{self._base}+{self.backend}"
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
