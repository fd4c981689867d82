"""Exact ranking of stored documents for one document: its match score (``scoring.score_match``,
the weighted mean of the cosines of the pair types both sides have) against many stored
documents of the other kind at once, read from their stored field vectors (``halfvec_send``
bytes) without making a ``DocumentVectors`` of each. What a query's candidates are chosen by
(``workers.matching.nearest``): the documents whose index entries are nearest its query, or
all of a kind too small for an index, ranked by the score a match would store. Pure: no I/O.

The stored documents' field vectors are decoded into one array (documents x slots x
dimensions, once per slot layout: a kind has few), so their scores are one matrix product
per pair type the two sides share (what it costs per query: README "Matching at scale").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType
from jobfit.shared.fields import slot_map
from jobfit.workers.scoring import MatchScore, from_halfvec
from jobfit.workers.vectors import DocumentVectors, other_kind, slot_order

Ranked = tuple[int, MatchScore]  # (document row id, its match with the ranking document)


def decode(stored: repo.StoredVectors) -> DocumentVectors:
    """A stored document's vectors."""
    return DocumentVectors.unpack(stored.kind, stored.slots, from_halfvec(stored.fields))


def order_key(ranked: Ranked) -> tuple[bool, float, int]:
    """Best first: the highest score, then no score, ties by row id."""
    doc_id, match = ranked
    return (match.score is None, -(match.score or 0.0), doc_id)


def rank(
    doc: DocumentVectors,
    stored: Sequence[repo.StoredVectors],
    weights: Mapping[PairType, float],
    limit: int,
) -> list[Ranked]:
    """The ``limit`` best of ``stored`` (documents of the other kind) for ``doc``, best first
    (``order_key``), each with its match score and pair scores: float64, as
    ``vectors.score_many``'s to rounding (what ``matching.match_top_k`` stores for a
    candidate)."""
    if not stored:
        return []
    mine = doc.pair_vectors()
    other = other_kind(doc.kind)
    theirs, order = slot_map(other), list(slot_order(other))
    x, present = _layout(stored, order)
    n = len(stored)
    num, den = np.zeros(n), np.zeros(n)
    cos: dict[PairType, np.ndarray] = {}
    has: dict[PairType, np.ndarray] = {}
    wide: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # column -> (float64 rows, their norms)
    for p in PairType:
        if p not in mine or p not in theirs:
            continue
        col = order.index(theirs[p])
        if not present[:, col].any():
            continue
        if col not in wide:
            mat = x[:, col, :].astype(np.float64)
            wide[col] = mat, np.sqrt(np.einsum("ij,ij->i", mat, mat))
        has[p], (mat, row_norms) = present[:, col], wide[col]
        q = np.asarray(mine[p], dtype=np.float64)
        norms = row_norms * float(np.linalg.norm(q))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos[p] = np.where(norms == 0.0, 0.0, (mat @ q) / np.where(norms == 0.0, 1.0, norms))
        num += np.where(has[p], weights.get(p, 0.0) * cos[p], 0.0)
        den += np.where(has[p], weights.get(p, 0.0), 0.0)
    shared = np.zeros(n, dtype=bool)
    for h in has.values():
        shared |= h
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(shared & (den > 0.0), num / np.where(den > 0.0, den, 1.0), np.nan)
    ids = np.fromiter((s.document_id for s in stored), dtype=np.int64, count=n)
    none = np.isnan(scores)
    best = np.lexsort((ids, -np.where(none, 0.0, scores), none))[: max(0, limit)]
    out: list[Ranked] = []
    for i in best:
        pairs = {p: float(cos[p][i]) for p in cos if has[p][i]}
        out.append((int(ids[i]), MatchScore(None if none[i] else float(scores[i]), pairs)))
    return out


def merge(a: Sequence[Ranked], b: Sequence[Ranked], limit: int) -> list[Ranked]:
    """The ``limit`` best of two rankings (of different documents)."""
    return sorted([*a, *b], key=order_key)[: max(0, limit)]


def _layout(
    stored: Sequence[repo.StoredVectors], order: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The stored documents' field vectors in one layout, float32 (documents x ``order``'s
    slots x dimensions, zeros where a document lacks a slot), and which it has (documents x
    slots): decoded once per layout stored (a kind has few)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(stored):
        groups.setdefault(tuple(s.slots), []).append(i)
    dim = next((int.from_bytes(s.fields[:2], "big") // len(s.slots) for s in stored if s.slots), 0)
    x = np.zeros((len(stored), len(order), dim), dtype=np.float32)
    present = np.zeros((len(stored), len(order)), dtype=bool)
    for names, rows in groups.items():
        if not names:
            continue
        cols = [order.index(name) for name in names]
        raw = b"".join(memoryview(stored[i].fields)[4:] for i in rows)
        block = np.frombuffer(raw, dtype=">f2").astype(np.float32)
        idx = np.asarray(rows)[:, None]
        x[idx, cols] = block.reshape(len(rows), len(names), dim)
        present[idx, cols] = True
    return x, present
