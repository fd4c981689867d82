"""Match scores: one row per (resume, job, model version) with its pair scores, written
idempotently under a scoring key (the weights), and read back as rankings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import any_, or_, select
from sqlalchemy import text as sql
from sqlalchemy.orm import Session, aliased

from jobfit.shared.orm import DocumentRow, MatchRow, ModelVersionRow, PairScoreRow, utcnow
from jobfit.shared.repository.chunks import chunked, id_array


class MatchSide(Protocol):
    """What a match row records of each of its documents (``DocumentRow``, or
    ``repository.DocumentHead`` where only that was read)."""

    @property
    def id(self) -> int: ...

    @property
    def content_hash(self) -> str: ...


@dataclass(frozen=True)
class MatchWrite:
    resume_id: int
    job_id: int
    score: float | None
    pair_scores: dict[str, float]
    resume_hash: str
    job_hash: str


def scoring_key(weights: dict[str, float]) -> str:
    """Identifies the scoring rule; rows scored under other weights are stale."""
    canon = ",".join(f"{k}={weights[k]:.6g}" for k in sorted(weights))
    return hashlib.sha256(canon.encode()).hexdigest()


# Per pair asked, an index lookup (``OFFSET 0`` keeps the subquery a nested loop of its
# own, and sequential scans are off for the statement). The planner prices
# ``matches`` by its last statistics: on a table that had grown since them (a new
# deployment, a bench size after a bulk delete) it read the whole table on every ingest,
# hashed as a join (25 ms at p50, 104 ms at p95 for a new job's 200 candidates among
# 1,000,000 resumes, a scratch profile) or once per pair when told the table was empty.
_FRESH_PAIRS = sql(
    "SELECT t.r, t.j FROM unnest(CAST(:r AS bigint[]), CAST(:j AS bigint[]),"
    "  CAST(:rh AS text[]), CAST(:jh AS text[])) AS t(r, j, rh, jh)"
    " CROSS JOIN LATERAL (SELECT 1 FROM matches m"
    "  WHERE m.resume_id = t.r AND m.job_id = t.j AND m.model_version_id = :v"
    "  AND m.scoring_key = :key AND m.resume_hash = t.rh AND m.job_hash = t.jh OFFSET 0) x"
)


def fresh_match_keys(
    *,
    session: Session,
    model_version_id: int,
    pairs: Sequence[tuple[MatchSide, MatchSide]],
    key: str,
) -> set[tuple[int, int]]:
    """The (resume, job) pairs already scored on the current content, model and weights."""
    wanted = {(r.id, j.id): (r.content_hash, j.content_hash) for r, j in pairs}
    fresh: set[tuple[int, int]] = set()
    if not wanted:
        return fresh
    session.execute(sql("SET LOCAL enable_seqscan = off"))
    for part in chunked(list(wanted)):
        params = {
            "r": [r for r, _ in part],
            "j": [j for _, j in part],
            "rh": [wanted[p][0] for p in part],
            "jh": [wanted[p][1] for p in part],
            "v": model_version_id,
            "key": key,
        }
        fresh.update((int(r), int(j)) for r, j in session.execute(_FRESH_PAIRS, params))
    session.execute(sql("SET LOCAL enable_seqscan = on"))  # the rest of the transaction as it was
    return fresh


def upsert_matches(
    *, session: Session, model_version_id: int, key: str, writes: Sequence[MatchWrite]
) -> int:
    """Write match rows and their pair scores; a redelivered write leaves the same rows."""
    ordered = sorted(writes, key=lambda w: (w.resume_id, w.job_id))  # one lock order: no deadlock
    for part in chunked(ordered):
        _upsert_match_rows(session, model_version_id, key, part)
    return len(ordered)


# The rows as columns, one array parameter each (as ``id_array``: one text, parsed once and then
# prepared, whatever the number of rows; SQLAlchemy's insertmanyvalues renders a new VALUES
# list per batch size, which psycopg parsed again each time: with the id reads, 26 of a new
# job's 189 ms among 1,000,000 resumes, profiled; README "Matching at scale"). Inserted in the
# order given (``ORDER BY``: one lock order); ON CONFLICT rewrites a stored row, and the
# stored row's id comes back either way.
_UPSERT_MATCHES = sql(
    "INSERT INTO matches (resume_id, job_id, model_version_id, score, pairs_used,"
    " resume_hash, job_hash, scoring_key, scored_at)"
    " SELECT r, j, :v, s, CAST(p AS jsonb), rh, jh, :key, :now"
    " FROM unnest(CAST(:r AS bigint[]), CAST(:j AS bigint[]), CAST(:s AS double precision[]),"
    "  CAST(:p AS text[]), CAST(:rh AS text[]), CAST(:jh AS text[])) AS t(r, j, s, p, rh, jh)"
    " ORDER BY r, j"
    " ON CONFLICT (resume_id, job_id, model_version_id) DO UPDATE SET score = EXCLUDED.score,"
    " pairs_used = EXCLUDED.pairs_used, resume_hash = EXCLUDED.resume_hash,"
    " job_hash = EXCLUDED.job_hash, scoring_key = EXCLUDED.scoring_key,"
    " scored_at = EXCLUDED.scored_at"
    " RETURNING id, resume_id, job_id"
)
_DELETE_PAIR_SCORES = sql("DELETE FROM pair_scores WHERE match_id = ANY(CAST(:m AS bigint[]))")
_INSERT_PAIR_SCORES = sql(
    "INSERT INTO pair_scores (match_id, pair_type, score)"
    " SELECT * FROM unnest(CAST(:m AS bigint[]), CAST(:t AS text[]),"
    "  CAST(:s AS double precision[]))"
    " ON CONFLICT (match_id, pair_type) DO UPDATE SET score = EXCLUDED.score"
)


def _upsert_match_rows(
    session: Session, model_version_id: int, key: str, ordered: Sequence[MatchWrite]
) -> None:
    found = session.execute(
        _UPSERT_MATCHES,
        {
            "v": model_version_id,
            "key": key,
            "now": utcnow(),
            "r": [w.resume_id for w in ordered],
            "j": [w.job_id for w in ordered],
            "s": [w.score for w in ordered],
            "p": [json.dumps(list(w.pair_scores)) for w in ordered],
            "rh": [w.resume_hash for w in ordered],
            "jh": [w.job_hash for w in ordered],
        },
    )
    ids = {(int(r), int(j)): int(i) for i, r, j in found}
    match_ids = [ids[(w.resume_id, w.job_id)] for w in ordered]
    # Pair types a new version of a document no longer has must not linger.
    session.execute(_DELETE_PAIR_SCORES, {"m": match_ids})
    pairs = [
        (mid, p, s)
        for mid, w in zip(match_ids, ordered, strict=True)
        for p, s in w.pair_scores.items()
    ]
    if pairs:
        m, t, s = (list(col) for col in zip(*pairs, strict=True))
        session.execute(_INSERT_PAIR_SCORES, {"m": m, "t": t, "s": s})


def kth_best(
    *, session: Session, model_version_id: int, side: str, ids: Sequence[int], k: int
) -> dict[int, float | None]:
    """Per document of ``side`` (``resume`` or ``job``): the score of its k-th best stored
    match under this version, None if it has fewer than k (anything enters its top k)."""
    col = "resume_id" if side == "resume" else "job_id"
    stmt = sql(
        "SELECT d.id, (SELECT m.score FROM matches m"  # noqa: S608 (names and ints of ours; values bound)
        f" WHERE m.model_version_id = :v AND m.{col} = d.id"
        " ORDER BY m.score DESC NULLS LAST OFFSET :off LIMIT 1)"
        " FROM unnest(CAST(:ids AS bigint[])) AS d(id)"
    )
    out: dict[int, float | None] = {}
    for part in chunked(sorted(set(ids))):
        rows = session.execute(stmt, {"v": model_version_id, "off": k - 1, "ids": list(part)})
        out.update((int(i), s) for i, s in rows)
    return out


def stale_partners(
    *, session: Session, model_version_id: int, side: str, ids: Sequence[int], key: str
) -> dict[int, set[int]]:
    """Per document of ``side``: the documents of the other kind whose stored match with it
    under this version was scored on other content of it or under other weights (``key``):
    a changed document's rows are rescored, not left stale; fresh ones are left alone."""
    col, other, own_hash = (
        (MatchRow.resume_id, MatchRow.job_id, MatchRow.resume_hash)
        if side == "resume"
        else (MatchRow.job_id, MatchRow.resume_id, MatchRow.job_hash)
    )
    out: dict[int, set[int]] = {i: set() for i in ids}
    for part in chunked(sorted(set(ids))):
        for i, o in session.execute(
            select(col, other)
            .join(DocumentRow, DocumentRow.id == col)
            .where(
                MatchRow.model_version_id == model_version_id,
                col == any_(id_array("ids", part)),
                (own_hash != DocumentRow.content_hash) | (MatchRow.scoring_key != key),
            )
        ):
            out[i].add(o)
    return out


@dataclass(frozen=True)
class TopRow:
    other_id: str  # the other document's external id
    score: float | None
    pair_scores: dict[str, float]


def top_matches(
    *, session: Session, model_version_id: int, side: str, ids: Sequence[int], n: int
) -> dict[int, list[TopRow]]:
    """Per document of ``side``: its ``n`` best stored matches under this version, best
    first (ties by the other id), in two statements for all of them."""
    out: dict[int, list[TopRow]] = {i: [] for i in ids}
    if n <= 0 or not ids:
        return out
    col, other = ("resume_id", "job_id") if side == "resume" else ("job_id", "resume_id")
    stmt = sql(
        "SELECT d.id, t.match_id, t.external_id, t.score FROM unnest(CAST(:ids AS bigint[])) d(id)"  # noqa: S608 (names and ints of ours; values bound)
        " CROSS JOIN LATERAL (SELECT m.id AS match_id, o.external_id, m.score FROM matches m"
        f" JOIN documents o ON o.id = m.{other}"
        f" WHERE m.model_version_id = :v AND m.{col} = d.id"
        " ORDER BY m.score DESC NULLS LAST, o.external_id LIMIT :n) t"
    )
    found: list[tuple[int, int, str, float | None]] = []
    for part in chunked(sorted(set(ids))):
        found += [
            (int(i), int(m), str(e), s)
            for i, m, e, s in session.execute(
                stmt, {"ids": list(part), "v": model_version_id, "n": n}
            )
        ]
    pairs = _pair_scores(session, [m for _, m, _, _ in found])
    for i, m, e, s in found:
        out[i].append(TopRow(other_id=e, score=s, pair_scores=pairs.get(m, {})))
    return out


@dataclass(frozen=True)
class RankedMatch:
    resume_id: str
    job_id: str
    title: str
    score: float | None
    pair_scores: dict[str, float]
    model_version: str


def ranked(
    *,
    session: Session,
    resume_id: str | None = None,
    job_id: str | None = None,
    model_version: str | None = None,
    top: int = 10,
) -> list[RankedMatch]:
    """Matches of one resume (best jobs) or one job (best resumes), best first.

    Without ``model_version``: the active version if it has scored this document, else the
    version that scored it most recently; a ranking never mixes two versions' scores.
    """
    resume, job = aliased(DocumentRow), aliased(DocumentRow)

    def of_document(stmt: Any) -> Any:
        stmt = (
            stmt.select_from(MatchRow)
            .join(resume, MatchRow.resume_id == resume.id)
            .join(job, MatchRow.job_id == job.id)
            .join(ModelVersionRow, MatchRow.model_version_id == ModelVersionRow.id)
        )
        if resume_id is not None:
            stmt = stmt.where(resume.external_id == resume_id)
        if job_id is not None:
            stmt = stmt.where(job.external_id == job_id)
        return stmt

    if model_version is None:
        # The active version (or a backend variant of it) once it has scored this document:
        # during a promotion's rebuild a document not reached yet keeps its previous ranking.
        model_version = session.execute(
            of_document(select(ModelVersionRow.version))
            .order_by(_serves_active().desc(), MatchRow.scored_at.desc())
            .limit(1)
        ).scalar_one_or_none()
    stmt = of_document(
        select(MatchRow, resume.external_id, job.external_id, job.payload, ModelVersionRow.version)
    )
    stmt = (
        stmt.where(ModelVersionRow.version == model_version)
        .order_by(MatchRow.score.desc().nulls_last(), job.external_id, resume.external_id)
        .limit(top)
    )
    rows = session.execute(stmt).all()
    pairs = _pair_scores(session, [m.id for m, *_ in rows])
    return [
        RankedMatch(
            resume_id=rid,
            job_id=jid,
            title=str(payload.get("title", "")),
            score=m.score,
            pair_scores=pairs.get(m.id, {}),
            model_version=version,
        )
        for m, rid, jid, payload, version in rows
    ]


def _serves_active() -> Any:
    """True for the active version's row and its backend variants' rows."""
    active = select(ModelVersionRow.version).where(ModelVersionRow.status == "active")
    return or_(
        ModelVersionRow.status == "active",
        ModelVersionRow.parent_version.in_(active.scalar_subquery()),
    )


def _pair_scores(session: Session, match_ids: list[int]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for part in chunked(match_ids):
        for mid, p, s in session.execute(
            select(PairScoreRow.match_id, PairScoreRow.pair_type, PairScoreRow.score).where(
                PairScoreRow.match_id == any_(id_array("ids", part))
            )
        ):
            out.setdefault(mid, {})[p] = s
    return out
