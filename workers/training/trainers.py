"""The two ways to train (``head``: a small head on the frozen encoder, minutes on a CPU;
``full``: sentence-transformers' trainer on all weights), and saving a trained model into the
model store atomically: a temporary directory renamed into place only once complete, so a
killed run leaves at most a ``.tmp-*`` directory (swept by the next run)."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jobfit.shared.model_store import check_model_dir
from jobfit.workers.training.encoding import Progress, encode_unique, no_progress

Mode = Literal["head", "full", "full+head"]
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 6 * 3600


@dataclass(frozen=True)
class TrainParams:
    mode: Mode = "head"
    epochs: int = 1  # full fine-tune epochs
    learning_rate: float = 5e-5
    batch_size: int = 16
    warmup_ratio: float = 0.1
    max_steps: int = -1  # cap on full fine-tune steps (-1: the epochs decide)
    seed: int = 42
    max_seq_length: int = 384
    head_epochs: int = 150
    head_learning_rate: float = 1e-3
    head_hidden: int = 0  # 0: the embedding dimension

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split_head(model: Any) -> tuple[list[Any], list[Any]]:
    """(encoder modules up to its first Normalize, head modules after it)."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    mods = list(model)
    cut = next((i for i, m in enumerate(mods) if isinstance(m, Normalize)), None)
    if cut is None:
        mods.append(Normalize())
        cut = len(mods) - 1
    return mods[: cut + 1], [m for m in mods[cut + 1 :] if not isinstance(m, Normalize)]


def train_head(
    model: Any,
    pairs: Sequence[tuple[str, str, float]],
    params: TrainParams,
    *,
    progress: Progress = no_progress,
) -> Any:
    """Freeze the encoder, train a Dense(tanh) -> Dense head on its embeddings of the unique
    texts (MSE of the cosine vs the label, full batch, AdamW). Returns a new
    SentenceTransformer: encoder + head + Normalize. A head the model already has is the
    starting point (fine-tuning from the active version)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    encoder_mods, old_head = _split_head(model)
    encoder = SentenceTransformer(modules=encoder_mods, device=str(model.device))
    encoder.max_seq_length = model.max_seq_length
    texts = [t for a, b, _ in pairs for t in (a, b)]
    vecs = encode_unique(
        encoder, texts, batch_size=params.batch_size, progress=progress, stage="embedding"
    )
    index = {t: i for i, t in enumerate(vecs)}
    emb = torch.tensor(np.stack(list(vecs.values())))
    a_idx = torch.tensor([index[a] for a, _, _ in pairs])
    b_idx = torch.tensor([index[b] for _, b, _ in pairs])
    y = torch.tensor([lab for _, _, lab in pairs], dtype=torch.float32)

    torch.manual_seed(params.seed)
    dim = emb.shape[1]
    hidden = params.head_hidden or dim
    if len(old_head) == 2 and all(isinstance(m, Dense) for m in old_head):
        first, second = (m.cpu() for m in old_head)
    else:
        first = Dense(dim, hidden, activation_function=torch.nn.Tanh())
        second = Dense(hidden, dim, activation_function=torch.nn.Identity())
    head = torch.nn.Sequential(first.linear, first.activation_function, second.linear)
    opt = torch.optim.AdamW(head.parameters(), lr=params.head_learning_rate)
    t0 = time.perf_counter()
    for epoch in range(params.head_epochs):
        opt.zero_grad()
        z = torch.nn.functional.normalize(head(emb), dim=-1)
        loss = torch.nn.functional.mse_loss((z[a_idx] * z[b_idx]).sum(-1), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == params.head_epochs:
            elapsed = time.perf_counter() - t0
            progress(
                "training head",
                epoch + 1,
                params.head_epochs,
                epoch=epoch + 1,
                loss=float(loss.detach()),
                elapsed_s=elapsed,
                eta_s=elapsed / (epoch + 1) * (params.head_epochs - epoch - 1),
            )
    return SentenceTransformer(
        modules=[*encoder_mods, first, second, Normalize()], device=str(model.device)
    )


def train_full(
    model: Any,
    pairs: Sequence[tuple[str, str, float]],
    params: TrainParams,
    *,
    work_dir: Path,
    progress: Progress = no_progress,
) -> Any:
    """sentence-transformers' trainer with CosineSimilarityLoss on all weights, in place."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            elapsed = time.perf_counter() - self.t0
            total = max(state.max_steps, 1)
            progress(
                "fine-tuning",
                state.global_step,
                total,
                epoch=round(float(state.epoch or 0), 3),
                loss=self.loss,
                elapsed_s=elapsed,
                eta_s=elapsed / max(state.global_step, 1) * (total - state.global_step),
            )

    cuda = str(model.device).startswith("cuda")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    train = Dataset.from_dict(
        {
            "sentence_0": [a for a, _, _ in pairs],
            "sentence_1": [b for _, b, _ in pairs],
            "label": [y for _, _, y in pairs],
        }
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="linear",
        warmup_ratio=params.warmup_ratio,
        seed=params.seed,
        data_seed=params.seed,
        bf16=bf16,
        fp16=cuda and not bf16,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss=CosineSimilarityLoss(model),
        callbacks=[Report()],
    )
    trainer.train()
    return model


def train(
    model: Any,
    pairs: Sequence[tuple[str, str, float]],
    params: TrainParams,
    *,
    work_dir: Path,
    progress: Progress = no_progress,
) -> Any:
    if params.mode in ("full", "full+head"):
        model = train_full(model, pairs, params, work_dir=work_dir, progress=progress)
    if params.mode in ("head", "full+head"):
        model = train_head(model, pairs, params, progress=progress)
    return model


def base_name(name: str) -> str:
    """``all-MiniLM-L6-v2-ft-20261127-081500-ab12cd`` -> ``all-MiniLM-L6-v2``."""
    return re.sub(r"-ft-\d{8}-\d{6}-[0-9a-f]{6}$", "", name)


def sweep_tmp(store: Path, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Remove temporary model directories left by killed runs."""
    removed = []
    if store.is_dir():
        for d in store.glob(f"{TMP_PREFIX}*"):
            if d.is_dir() and time.time() - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def save_atomically(model: Any, store: Path, name: str) -> Path:
    """Save into ``store/.tmp-<uuid>``, then rename to ``store/<name>``."""
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        model.save(str(tmp))
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        check_model_dir(tmp)
        final = store / name
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
