"""The two ways to train (``head``: a small head on the frozen encoder, minutes on a CPU;
``full``: sentence-transformers' trainer on all weights), both with the served rule as the
objective (a match's score, the weighted mean of its pair cosines, against its target; the
pair-type weights learned with it), and saving a trained model into the
model store atomically: a temporary directory renamed into place only once complete, so a
killed run leaves at most a ``.tmp-*`` directory (swept by the next run)."""

from __future__ import annotations

import copy
import hashlib
import math
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from jobfit.shared.config import PairType, TrainTarget
from jobfit.shared.model_store import check_model_dir
from jobfit.workers.training.data import MatchExample, rank_targets
from jobfit.workers.training.encoding import Progress, encode_unique, no_progress

Mode = Literal["head", "full", "full+head"]
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 6 * 3600


@dataclass(frozen=True)
class TrainParams:
    mode: Mode = "head"
    epochs: int = 1  # full fine-tune epochs
    learning_rate: float = 2e-5
    batch_size: int = 16  # texts per forward pass when embedding
    matches_per_step: int = 64  # full fine-tune: matches (with all their texts) per step
    warmup_ratio: float = 0.1
    max_steps: int = -1  # cap on full fine-tune steps (-1: the epochs decide)
    # Full fine-tune: stop after this many seconds of training, keeping the steps done (an
    # operator's bound on a CPU or a shared GPU); None: the steps decide.
    time_budget_s: float | None = None
    seed: int = 42
    max_seq_length: int = 384
    head_epochs: int = 400  # full-batch steps of the head (the most, with early stopping)
    head_learning_rate: float = 1e-3
    head_hidden: int = 0  # 0: the embedding dimension
    head_weight_decay: float = 0.01
    # Early stopping (off by default): this share of the training resumes and of the
    # training jobs is held out as a validation slice; the head trains on the rest, is
    # checked every ``head_check_every`` steps (match Spearman, mean of the unseen-resume and
    # unseen-job slices), and stops after ``head_patience`` checks without a better one; then
    # it is trained again on all training matches for the best number of steps. 0: no
    # slice, ``head_epochs`` steps on every training match. Measured on the real data (README
    # "Which path on which hardware"): the slices stopped at 55-105 steps, where held-out
    # resumes and held-out jobs both still gain (400 steps: 0.742 -> 0.748 and
    # 0.558 -> 0.646; the mean of four seeds +0.011 and +0.053); dropout and weight decay
    # regularise the head.
    head_val_fraction: float = 0.0
    head_check_every: int = 5
    head_patience: int = 8
    learn_weights: bool = True  # learn the pair-type weights of the match score
    weights_learning_rate: float = 1e-2  # full fine-tune: the pair weights' own rate
    # The head: the pair weights' own rate. At the head's rate (1e-3) they barely left 1 in
    # the ~100 steps early stopping then allowed; 3e-2 let them move: validation 0.657 ->
    # 0.669 (README "Which path on which hardware").
    head_weights_learning_rate: float = 3e-2
    # Dropout on the encoder embeddings the head trains on (training steps only; checks and
    # serving see them whole): validation 0.669 -> 0.675.
    head_dropout: float = 0.1
    # What a match's score is trained towards: ``rank``, its label's rank among the training
    # matches on the labels' scale (``data.rank_targets``), or the ``label`` itself. Ranks:
    # held-out resumes 0.748 -> 0.751 and held-out jobs 0.631 -> 0.667 (MiniLM head, mean of
    # four seeds; README "Which path on which hardware"). ``full`` trains towards the same
    # target, not measured with it (no GPU).
    target: TrainTarget = "rank"

    def __post_init__(self) -> None:
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), not {self.head_dropout}")
        if self.target not in get_args(TrainTarget):
            raise ValueError(f"target must be one of {get_args(TrainTarget)}, not {self.target!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """A trained model and the pair-type weights its match score uses (stored with the
    version), with what training reported (validation, steps)."""

    model: Any
    pair_weights: dict[str, float]
    info: dict[str, Any]


def _split_head(model: Any) -> tuple[list[Any], list[Any]]:
    """(encoder modules up to its first Normalize, head modules after it)."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    mods = list(model)
    cut = next((i for i, m in enumerate(mods) if isinstance(m, Normalize)), None)
    if cut is None:
        mods.append(Normalize())
        cut = len(mods) - 1
    return mods[: cut + 1], [m for m in mods[cut + 1 :] if not isinstance(m, Normalize)]


def encoder_of(model: Any) -> Any:
    """The model without its head: what a head is trained on."""
    from sentence_transformers import SentenceTransformer

    encoder_mods, _ = _split_head(model)
    encoder = SentenceTransformer(modules=encoder_mods, device=str(model.device))
    encoder.max_seq_length = model.max_seq_length
    return encoder


def through_head(model: Any, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ``model.encode`` gives for texts whose encoder embeddings are ``base``: its head
    modules applied to them (no re-encoding; the quality bench caches encoder embeddings)."""
    import torch

    _, head = _split_head(model)
    texts = list(base)
    x = torch.tensor(np.stack([base[t] for t in texts]))
    with torch.inference_mode():
        features = {"sentence_embedding": x}
        for module in head:
            features = module.cpu()(features)
        z = torch.nn.functional.normalize(features["sentence_embedding"], dim=-1)
    return dict(zip(texts, z.numpy().astype(np.float32), strict=True))


def _initial_log_weights(init: Mapping[str, float] | None) -> list[float]:
    w = init or {}
    return [math.log(max(float(w.get(p.value, 1.0)), 1e-3)) for p in PairType]


def weights_from_log(log_w: Any) -> dict[str, float]:
    """Learned log-weights -> stored weights, scaled to a mean of 1 (the score is a weighted
    mean, so only their ratios matter)."""
    w = np.exp(np.asarray(log_w.detach().cpu(), dtype=np.float64))
    w = w / w.mean()
    return {p.value: round(float(x), 4) for p, x in zip(PairType, w, strict=True)}


def _val_slice(
    matches: Sequence[MatchExample], fraction: float, seed: int
) -> tuple[list[MatchExample], list[MatchExample], list[MatchExample]]:
    """(core, unseen resumes, unseen jobs): a hash of the seed and the id puts ``fraction``
    of the training resumes and of the training jobs into the validation slice."""

    def held(kind: str, key: str) -> bool:
        digest = hashlib.sha256(f"val:{seed}:{kind}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    core, val_resumes, val_jobs = [], [], []
    for m in matches:
        if held("job", m.job_id):
            val_jobs.append(m)
        elif held("resume", m.resume_id):
            val_resumes.append(m)
        else:
            core.append(m)
    return core, val_resumes, val_jobs


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    value = float(spearmanr(x, y).statistic)
    return value if math.isfinite(value) else 0.0


def head_optimizer(head: Any, log_w: Any, params: TrainParams) -> Any:
    """AdamW for the head (its rate, weight decay) and, when learned, the pair-type
    log-weights (their own rate, no decay: they only set ratios)."""
    import torch

    groups: list[dict[str, Any]] = [{"params": list(head.parameters())}]
    if params.learn_weights:
        groups.append(
            {"params": [log_w], "lr": params.head_weights_learning_rate, "weight_decay": 0.0}
        )
    return torch.optim.AdamW(
        groups, lr=params.head_learning_rate, weight_decay=params.head_weight_decay
    )


@dataclass
class _HeadFit:
    """One run of the head's optimisation on a table of encoder embeddings."""

    emb: Any
    index: Mapping[str, int]
    old_head: list[Any]
    params: TrainParams
    init_weights: Mapping[str, float] | None
    progress: Progress

    def fresh(self) -> tuple[Any, Any, Any]:
        import torch
        from sentence_transformers.sentence_transformer.modules import Dense

        torch.manual_seed(self.params.seed)
        dim = self.emb.shape[1]
        hidden = self.params.head_hidden or dim
        if len(self.old_head) == 2 and all(isinstance(m, Dense) for m in self.old_head):
            first, second = (copy.deepcopy(m).cpu() for m in self.old_head)
        else:
            first = Dense(dim, hidden, activation_function=torch.nn.Tanh())
            second = Dense(hidden, dim, activation_function=torch.nn.Identity())
        log_w = torch.tensor(_initial_log_weights(self.init_weights), requires_grad=True)
        return first, second, log_w

    def run(
        self,
        train_on: Sequence[MatchExample],
        steps: int,
        extra: Sequence[tuple[str, str, float]] = (),
        checks: Sequence[Sequence[MatchExample]] = (),
    ) -> tuple[Any, Any, Any, int, float]:
        """Train for up to ``steps``; with ``checks``, stop early on their mean match
        Spearman. Returns (first Dense, second Dense, log-weights, best step, best value)."""
        import torch

        from jobfit.workers.training.match_loss import MatchTensors

        params, emb = self.params, self.emb
        first, second, log_w = self.fresh()
        head = torch.nn.Sequential(first.linear, first.activation_function, second.linear)
        t = MatchTensors.build(train_on, self.index, extra)
        check_t = [MatchTensors.build(c, self.index) for c in checks]
        opt = head_optimizer(head, log_w, params)
        best, best_step, waited = -math.inf, steps, 0
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            opt.zero_grad()
            x = (
                torch.nn.functional.dropout(emb, params.head_dropout)
                if params.head_dropout
                else emb
            )
            z = torch.nn.functional.normalize(head(x), dim=-1)
            loss = torch.nn.functional.mse_loss(t.scores(z, log_w), t.labels)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if check_t and step % params.head_check_every == 0:
                with torch.no_grad():
                    z = torch.nn.functional.normalize(head(emb), dim=-1)
                    value = float(
                        np.mean(
                            [
                                _spearman(c.scores(z, log_w).numpy(), c.labels.numpy())
                                for c in check_t
                            ]
                        )
                    )
                if value > best:
                    best, best_step, waited = value, step, 0
                else:
                    waited += 1
                    if waited >= params.head_patience:
                        break
            if step % 10 == 0 or step == steps:
                elapsed = time.perf_counter() - t0
                self.progress(
                    "training head",
                    step,
                    steps,
                    epoch=step,
                    loss=float(loss.detach()),
                    elapsed_s=elapsed,
                    eta_s=elapsed / step * (steps - step),
                )
        return first, second, log_w, best_step, best


def train_head(
    model: Any,
    matches: Sequence[MatchExample],
    params: TrainParams,
    *,
    extra_pairs: Sequence[tuple[str, str, float]] = (),
    init_weights: Mapping[str, float] | None = None,
    base_vectors: Mapping[str, np.ndarray] | None = None,
    progress: Progress = no_progress,
) -> TrainResult:
    """Freeze the encoder; train a Dense(tanh) -> Dense head (and the pair-type weights) on
    its embeddings of the unique texts, full batch, AdamW with weight decay. The loss is the
    served rule: MSE between a match's score (the weighted mean of its pair cosines) and its
    label (``train`` hands in the training target). ``head_epochs`` steps on every training
    match; with ``head_val_fraction`` (off by default), a validation slice of unseen resumes
    and unseen jobs picks the number of steps first (early stopping).

    ``base_vectors``: encoder embeddings already computed (a cache); otherwise they are
    encoded here. A head the model already has is the starting point (fine-tuning from the
    active version), as are ``init_weights``. Returns encoder + head + Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    encoder_mods, old_head = _split_head(model)
    texts = [t for mt in matches for _, a, b in mt.pairs for t in (a, b)]
    texts += [t for a, b, _ in extra_pairs for t in (a, b)]
    if base_vectors is None or not set(texts) <= set(base_vectors):
        base_vectors = encode_unique(
            encoder_of(model),
            texts,
            batch_size=params.batch_size,
            progress=progress,
            stage="embedding",
        )
    index = {t: i for i, t in enumerate(sorted(set(texts)))}
    emb = torch.tensor(np.stack([base_vectors[t] for t in index]))
    fit = _HeadFit(emb, index, old_head, params, init_weights, progress)
    info: dict[str, Any] = {"objective": "match-level MSE (weighted mean of pair cosines)"}
    steps = params.head_epochs
    core, val_resumes, val_jobs = (
        _val_slice(matches, params.head_val_fraction, params.seed)
        if params.head_val_fraction > 0
        else ([], [], [])
    )
    if core and min(len(val_resumes), len(val_jobs)) >= 3:
        *_, steps, val = fit.run(core, params.head_epochs, checks=(val_resumes, val_jobs))
        info.update(
            head_steps=steps,
            val_match_spearman=round(val, 4),
            val_matches=len(val_resumes) + len(val_jobs),
        )
    else:
        info.update(head_steps=steps, val_matches=0)
    first, second, log_w, _, _ = fit.run(matches, steps, extra_pairs)
    trained = SentenceTransformer(
        modules=[*encoder_mods, first, second, Normalize()], device=str(model.device)
    )
    trained.max_seq_length = model.max_seq_length
    return TrainResult(trained, weights_from_log(log_w), info)


def train_full(
    model: Any,
    matches: Sequence[MatchExample],
    params: TrainParams,
    *,
    work_dir: Path,
    init_weights: Mapping[str, float] | None = None,
    progress: Progress = no_progress,
) -> TrainResult:
    """sentence-transformers' trainer on all weights, in place, with the match-level loss
    (``MatchScoreLoss``): each step takes ``matches_per_step`` matches with all their texts
    (each distinct text encoded once) and compares their weighted mean pair cosines with
    their labels; the pair-type weights are the loss's parameters."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    from jobfit.workers.training.match_loss import MatchCollator, MatchScoreLoss

    class Report(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            elapsed = time.perf_counter() - self.t0
            if params.time_budget_s is not None and elapsed >= params.time_budget_s:
                control.should_training_stop = True
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
        {"match": list(range(len(matches))), "label": [m.label for m in matches]}
    )
    loss = MatchScoreLoss(model, _initial_log_weights(init_weights), learn=params.learn_weights)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.matches_per_step,
        learning_rate=params.learning_rate,
        learning_rate_mapping={r"log_weights": params.weights_learning_rate},
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
        loss=loss,
        # Duck-typed: the trainer only calls it on a list of rows.
        data_collator=MatchCollator(model.tokenize, matches),  # type: ignore[arg-type]
        callbacks=[Report()],
    )
    trainer.train()
    return TrainResult(
        model,
        weights_from_log(loss.log_weights),
        {"objective": "match-level MSE (weighted mean of pair cosines)"},
    )


def train(
    model: Any,
    matches: Sequence[MatchExample],
    params: TrainParams,
    *,
    work_dir: Path,
    extra_pairs: Sequence[tuple[str, str, float]] = (),
    init_weights: Mapping[str, float] | None = None,
    base_vectors: Mapping[str, np.ndarray] | None = None,
    progress: Progress = no_progress,
) -> TrainResult:
    """Train by ``params.mode``; ``full+head`` hands the first stage's weights to the second.
    Generic pair files (``extra_pairs``) join the head's training as one-pair matches, with
    their own labels (``params.target`` applies to the labelled matches)."""
    if params.target == "rank":
        matches = rank_targets(matches)
    result = TrainResult(model, dict(init_weights or {}), {})
    if params.mode in ("full", "full+head"):
        result = train_full(
            model,
            matches,
            params,
            work_dir=work_dir,
            init_weights=init_weights,
            progress=progress,
        )
    if params.mode in ("head", "full+head"):
        head = train_head(
            result.model,
            matches,
            params,
            extra_pairs=extra_pairs,
            init_weights=result.pair_weights or init_weights,
            base_vectors=base_vectors if params.mode == "head" else None,
            progress=progress,
        )
        result = TrainResult(head.model, head.pair_weights, {**result.info, **head.info})
    return TrainResult(result.model, result.pair_weights, {"target": params.target, **result.info})


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
