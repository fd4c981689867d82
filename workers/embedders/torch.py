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

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model will see them (special tokens in, truncated)."""
        ids = self._model.tokenizer(
            texts, truncation=True, max_length=self.spec.max_seq_length, add_special_tokens=True
        )["input_ids"]
        return [len(x) for x in ids]

    def _encode(self, texts: list[str]) -> np.ndarray:
        """The texts are packed by length into forward passes within the token budget (see
        pack_by_tokens)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        t0 = time.perf_counter()
        passes = pack_by_tokens(
            self.token_lengths(texts),
            self.spec.token_budget,
            self.spec.batch_size,
            self.spec.pass_overhead,
        )
        torch, model = self._torch, self._model
        with torch.inference_mode():
            for idx in passes:
                # What ``encode`` does for one batch, without its per-call overhead (device
                # lookup over every parameter, re-sorting): one forward pass per packed batch.
                features = model.preprocess([texts[i] for i in idx])
                features = {
                    k: v.to(self._device) if isinstance(v, torch.Tensor) else v
                    for k, v in features.items()
                }
                emb = model(features)["sentence_embedding"]
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
