"""The train/evaluation split: by resume (or by job), never by row, since rows share
resumes. Pure functions; ``shared.repository.labels`` stores the assignment."""

from __future__ import annotations

import hashlib
from typing import Literal

SplitName = Literal["resume", "job"]
SPLITS: tuple[SplitName, ...] = ("resume", "job")
EVAL_FRACTION = 0.2
SPLIT_SEED = 42


def split_part(split: SplitName, external_id: str, *, seed: int = SPLIT_SEED) -> str:
    """Deterministic side of a resume (split ``resume``) or job (split ``job``): a hash of
    the seed and the id, so it never depends on arrival order or on the other documents."""
    digest = hashlib.sha256(f"{seed}:{split}:{external_id}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < EVAL_FRACTION else "train"
