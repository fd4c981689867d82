"""The match-level objective: a match's score is the weighted mean of its pair cosines (what
the workers serve, ``workers.scoring.score_match``), and the loss is its squared error
against the match's label (the training target ``trainers.train`` hands in: by default
the label's rank, ``data.rank_targets``). ``MatchTensors`` is that rule on a table of
embeddings (the head trains on cached ones); ``MatchScoreLoss`` and ``MatchCollator`` are
the same rule as a sentence-transformers loss over all of a batch of matches' texts at once
(``full``).

Pair types are indexed in ``PairType`` order; one more index, with a fixed weight of 1, is
for generic pair-file examples (a one-pair match of no pair type).

The pair cosines come from one matrix product of the distinct resume-side rows with the
distinct job-side rows (``pair_grid``): matches share few texts on each side (9.5k matches,
58k pairs, 1,188 distinct resume texts x 116 job texts on the real data), so the product
replaces a gather of two rows of the embedding table per pair, the cost of each training step
of the head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jobfit.shared.config import PairType
from jobfit.workers.training.data import MatchExample

KIND = {p: i for i, p in enumerate(PairType)}
EXTRA = len(PairType)  # the kind of a pair-file example
# The grid of distinct (resume row, job row) cosines is used while it has at most this many
# cells per pair; beyond it (e.g. many pair-file examples with texts of their own) each pair
# is a dot product of its two rows.
GRID_CELLS_PER_PAIR = 16


def pair_grid(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(distinct ``a`` rows, distinct ``b`` rows, each pair's cell in their flattened grid),
    or None where the grid would exceed ``GRID_CELLS_PER_PAIR`` cells per pair."""
    left, row = torch.unique(a, return_inverse=True)
    right, col = torch.unique(b, return_inverse=True)
    if len(left) * len(right) > GRID_CELLS_PER_PAIR * max(len(a), 1):
        return None
    return left, right, row * len(right) + col


def weighted_match_scores(
    cos: torch.Tensor, kind: torch.Tensor, match: torch.Tensor, n: int, log_w: torch.Tensor
) -> torch.Tensor:
    """Per match: sum(w * cos) / sum(w) over its pairs, with w = exp(log_w) by pair type."""
    w = torch.cat([log_w.exp(), log_w.new_ones(1)])[kind]
    num = cos.new_zeros(n).index_add(0, match, w * cos)
    den = cos.new_zeros(n).index_add(0, match, w)
    return num / den


@dataclass(frozen=True)
class MatchTensors:
    """Matches as index tensors into a table of text embeddings."""

    a: torch.Tensor  # per pair: row of the resume text
    b: torch.Tensor  # per pair: row of the job text
    kind: torch.Tensor  # per pair: pair type index
    match: torch.Tensor  # per pair: which match
    labels: torch.Tensor  # per match
    grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # ``pair_grid(a, b)``

    @classmethod
    def build(
        cls,
        matches: Sequence[MatchExample],
        index: Mapping[str, int],
        extra: Iterable[tuple[str, str, float]] = (),
    ) -> MatchTensors:
        a, b, kind, match, labels = [], [], [], [], []
        for i, m in enumerate(matches):
            for p, ra, jb in m.pairs:
                a.append(index[ra])
                b.append(index[jb])
                kind.append(KIND[p])
                match.append(i)
            labels.append(m.label)
        for ra, jb, y in extra:
            a.append(index[ra])
            b.append(index[jb])
            kind.append(EXTRA)
            match.append(len(labels))
            labels.append(float(y))
        ta, tb = torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)
        return cls(
            ta,
            tb,
            torch.tensor(kind, dtype=torch.long),
            torch.tensor(match, dtype=torch.long),
            torch.tensor(labels, dtype=torch.float32),
            pair_grid(ta, tb),
        )

    def cosines(self, z: torch.Tensor) -> torch.Tensor:
        """Each pair's cosine from normalised embeddings ``z`` (rows as in the index)."""
        if self.grid is None:
            return (z[self.a] * z[self.b]).sum(-1)
        left, right, cell = self.grid
        return (z[left] @ z[right].T).reshape(-1)[cell]

    def scores(self, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        """Match scores from normalised embeddings ``z`` (rows as in the index)."""
        cos = self.cosines(z)
        return weighted_match_scores(cos, self.kind, self.match, len(self.labels), log_w)


class MatchCollator:
    """Batches of match ids -> one tokenised batch of the matches' distinct texts
    (``texts_*``) and a ``label`` tensor of one row per pair: (resume text row, job text row,
    pair type, match in batch, match label). The pair structure rides in the label because
    the trainer hands the loss only (features, labels)."""

    valid_label_columns = ("label",)  # read by the trainer's batch sampler

    def __init__(
        self, tokenize: Callable[[list[str]], dict[str, Any]], matches: Sequence[MatchExample]
    ):
        self.tokenize = tokenize
        self.matches = matches

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = [self.matches[int(r["match"])] for r in rows]
        texts = sorted({t for m in batch for _, a, b in m.pairs for t in (a, b)})
        index = {t: i for i, t in enumerate(texts)}
        t = MatchTensors.build(batch, index)
        label = torch.stack(
            [t.a.float(), t.b.float(), t.kind.float(), t.match.float(), t.labels[t.match]], dim=1
        )
        out = {f"texts_{k}": v for k, v in self.tokenize(texts).items()}
        out["label"] = label
        return out


class MatchScoreLoss(torch.nn.Module):
    """MSE between each match's weighted mean pair cosine and its label, over all of a
    batch's texts at once; the pair-type weights (``log_weights``) are parameters."""

    def __init__(self, model: Any, log_weights: Sequence[float], *, learn: bool = True):
        super().__init__()
        self.model = model
        self.log_weights = torch.nn.Parameter(torch.tensor(list(log_weights)), requires_grad=learn)

    def forward(
        self, features: list[dict[str, torch.Tensor]], labels: torch.Tensor
    ) -> torch.Tensor:
        (texts,) = features
        z = torch.nn.functional.normalize(self.model(texts)["sentence_embedding"], dim=-1)
        a, b, kind, match = (labels[:, i].long() for i in range(4))
        n = int(match.max()) + 1
        y = labels.new_zeros(n).index_copy(0, match, labels[:, 4].float())
        cos = (z[a] * z[b]).sum(-1).float()
        scores = weighted_match_scores(cos, kind, match, n, self.log_weights.float())
        return torch.nn.functional.mse_loss(scores, y)
