"""The torch backend: a sentence-transformers model, loaded once, used for inference only
(CPU or GPU, fp16 on a GPU when asked)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from jobfit.shared.model_store import ModelNotFoundError, check_model_dir, version_of
from jobfit.workers.embedders.base import BaseEmbedder, ModelSpec
from jobfit.workers.embedders.packing import pack_by_tokens

log = logging.getLogger(__name__)


class SentenceTransformerEmbedder(BaseEmbedder):
    """A sentence-transformers model loaded once, used for inference only."""

    backend = "torch"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_model_dir(spec.path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self._version = version_of(spec.path)
        t0 = time.perf_counter()
        model = SentenceTransformer(str(spec.path), device=spec.device, local_files_only=True)
        model.max_seq_length = spec.max_seq_length
        if spec.fp16 and spec.device.startswith("cuda"):
            model.half()
        model.eval()
        self._model: Any = model
        self._device = torch.device(spec.device)
        self._torch = torch
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ModelNotFoundError(f"{spec.path} does not declare an embedding dimension")
        self._dim = int(dim)
        log.info(
            "loaded model %s (%s, dim %d) on %s%s in %.1fs",
            self._version,
            spec.path,
            self._dim,
            spec.device,
            " fp16" if spec.fp16 and spec.device.startswith("cuda") else "",
            time.perf_counter() - t0,
        )

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Tokenized once (``preprocess`` of the whole batch, padded to its longest text); the
        passes are packed from those lengths (see pack_by_tokens), and each pass takes its
        rows and only the columns its own longest text needs: the features ``preprocess``
        would make for the pass alone, without tokenizing its texts again."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        t0 = time.perf_counter()
        torch, model = self._torch, self._model
        features = model.preprocess(texts)
        mask = features["attention_mask"]
        passes = pack_by_tokens(
            mask.sum(dim=1).tolist(),
            self.spec.token_budget,
            self.spec.batch_size,
            self.spec.pass_overhead,
        )
        with torch.inference_mode():
            for idx in passes:
                rows = torch.tensor(idx)
                # The columns any text of the pass uses: contiguous on either padding side.
                keep = mask[rows].any(dim=0)
                # What ``encode`` does for one batch, without its per-call overhead (device
                # lookup over every parameter, re-sorting): one forward pass per packed batch.
                batch = {k: self._rows(v, rows, keep, mask.shape) for k, v in features.items()}
                emb = model(batch)["sentence_embedding"]
                emb = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
                out[idx] = emb.cpu().numpy()
        dt = time.perf_counter() - t0
        log.info(
            "encoded %d texts in %d passes, %.3fs (%.1f sentences/s)",
            len(texts),
            len(passes),
            dt,
            len(texts) / dt,
        )
        return out

    def _rows(self, value: Any, rows: Any, keep: Any, shape: Any) -> Any:
        """One feature for one pass: per-token tensors cut to the pass's columns, per-text
        ones to its rows, anything else (the ``modality`` tag) as it is."""
        if not isinstance(value, self._torch.Tensor):
            return value
        value = value[rows][:, keep] if value.shape == shape else value[rows]
        return value.to(self._device)
