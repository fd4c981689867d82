"""Matching documents against the other kind under one model version: which (resume, job)
pairs are scored, scored exactly (``scoring.score_match`` on their field vectors), stored.

all    (``scoring.mode``) every pair: a resume against every stored job, a job against every
       stored resume. Storage grows with the product of the corpora.
top_k  a document's query finds ``index_oversample`` times ``scoring.candidates`` documents
       of the other kind through the version's entry index (``repository.vectors``), whose
       stored vectors, read by the same statement, rank them exactly (``workers.ranking``):
       the best ``candidates`` are its candidates (``nearest``), with the match that ranking
       computed; stored are its best ``top_k``, the candidates whose own top K it enters
       (their k-th best stored score is lower: a new job appears in the rankings of the
       resumes it beats), and its existing rows (rescored, so a changed document leaves
       nothing stale). Rows written per document are bounded by ``top_k + candidates``,
       whatever the corpus. A candidate's row records the content hash of the vectors it
       was scored on: its document's, where ingest wrote the two in one transaction under
       this version. Where a document's vectors lag its content (a new version's rebuild
       has not reached it, a rollout's workers of the previous version ingested it, the
       dataset import stored it without vectors), the row records the old hash, and the
       document's next turn (its ingest, ``jobfit rescore``) finds it stale and rescores
       it (``stale_partners``).

Pairs already stored on the same contents, version and weights are not written again, so a
redelivered task writes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy.orm import Session

from jobfit.shared import repository as repo
from jobfit.shared.orm import DocumentRow
from jobfit.shared.schemas import TopMatch
from jobfit.workers import index_basis
from jobfit.workers.embedding import ModelContext, document_vectors
from jobfit.workers.ranking import Ranked, merge, rank
from jobfit.workers.scoring import MatchScore
from jobfit.workers.vectors import DocumentVectors, other_kind, score, score_many

log = logging.getLogger(__name__)

# Stored vectors read per statement where a kind is ranked whole (no basis yet, or an index
# that came back short).
EXACT_PAGE = 2_000

Pair = tuple[int, int]  # (resume row id, job row id)
# A ranking (``ranking.rank``), with the head of each document in it as the stored vectors it
# was ranked on recorded it (the content those were made from), by document row id.
Found = tuple[list[Ranked], dict[int, repo.DocumentHead]]
Headed = tuple[repo.DocumentHead, MatchScore]  # a match, with what it records of the other side
Scored = dict[Pair, tuple[repo.MatchSide, repo.MatchSide, MatchScore]]


def score_documents(
    *,
    session: Session,
    ctx: ModelContext,
    rows: Sequence[DocumentRow],
    per_doc: Counter[int] | None = None,
) -> tuple[int, int]:
    """Score these documents the configured way (``scoring.mode``); (rows written, texts
    embedded). ``per_doc`` counts the rows written for each document (by row id)."""
    if ctx.scoring.mode == "top_k":
        return match_top_k(session=session, ctx=ctx, rows=rows, per_doc=per_doc)
    written = embedded = 0
    for kind in ("resume", "job"):
        mine = [r for r in rows if r.kind == kind]
        if not mine:
            continue
        everyone = repo.list_documents(session=session, kind=other_kind(kind))
        resumes, jobs = (mine, everyone) if kind == "resume" else (everyone, mine)
        w, e = score_pairs(session=session, ctx=ctx, resumes=resumes, jobs=jobs, per_doc=per_doc)
        written, embedded = written + w, embedded + e
    return written, embedded


def score_pairs(
    *,
    session: Session,
    ctx: ModelContext,
    resumes: Sequence[DocumentRow],
    jobs: Sequence[DocumentRow],
    per_doc: Counter[int] | None = None,
) -> tuple[int, int]:
    """Score every (resume, job) of these whose stored match is missing or stale; (rows
    written, texts embedded)."""
    pairs = [(r, j) for r in resumes for j in jobs]
    fresh = repo.fresh_match_keys(
        session=session, model_version_id=ctx.model_version_id, pairs=pairs, key=ctx.scoring_key
    )
    todo = [(r, j) for r, j in pairs if (r.id, j.id) not in fresh]
    if not todo:
        return 0, 0
    docs = {row.id: row for pair in todo for row in pair}
    vecs, embedded = document_vectors(session=session, ctx=ctx, rows=list(docs.values()))
    scored: Scored = {
        (r.id, j.id): (r, j, score(vecs[r.id], vecs[j.id], ctx.weights)) for r, j in todo
    }
    return _write(session, ctx, scored, per_doc), embedded


def match_top_k(
    *,
    session: Session,
    ctx: ModelContext,
    rows: Sequence[DocumentRow],
    per_doc: Counter[int] | None = None,
    reverse: bool = True,
) -> tuple[int, int]:
    """Retrieve, score exactly, store (module docstring); (rows written, texts embedded).
    ``reverse=False`` (a rebuild, where every document gets its own turn) stores only each
    document's own top K."""
    k, version = ctx.scoring.top_k, ctx.model_version_id
    own, embedded = document_vectors(session=session, ctx=ctx, rows=rows)
    # Per document, its candidates and existing partners, each with its match and its head.
    # A candidate's head holds the content its stored vectors were made from, as its own
    # pool read them: what its match was scored on (module docstring: vectors that lag a
    # document's content make a row that the document's next turn finds stale and
    # rescores).
    found: dict[int, dict[int, Headed]] = {}
    for row in rows:
        found[row.id] = {}
        if own[row.id].slots:
            ranked, heads = nearest_found(
                session=session, ctx=ctx, doc=own[row.id], limit=max(ctx.scoring.candidates, k)
            )
            found[row.id] = {i: (heads[i], m) for i, m in ranked}
    existing: dict[int, set[int]] = {}
    for kind in ("resume", "job"):
        ids = [r.id for r in rows if r.kind == kind]
        existing |= repo.stale_partners(
            session=session, model_version_id=version, side=kind, ids=ids, key=ctx.scoring_key
        )
    more = _existing_scored(
        session=session, ctx=ctx, rows=rows, own=own, found=found, existing=existing
    )
    kth: dict[int, float | None] = {}
    if reverse:
        for kind in ("resume", "job"):
            ids = list({h.id for f in found.values() for h, _ in f.values() if h.kind == kind})
            kth |= repo.kth_best(session=session, model_version_id=version, side=kind, ids=ids, k=k)
    chosen: Scored = {}
    for row in rows:
        mine = list(found[row.id].values())
        for place, (pair, r, j, m) in enumerate(_ranked(repo.DocumentHead.of(row), mine)):
            other = j if row.kind == "resume" else r
            enters = reverse and m.score is not None and _beats(m.score, kth.get(other.id, None))
            if place < k or enters or other.id in existing[row.id]:
                chosen[pair] = (r, j, m)
    fresh = repo.fresh_match_keys(
        session=session,
        model_version_id=version,
        pairs=[(r, j) for r, j, _ in chosen.values()],
        key=ctx.scoring_key,
    )
    todo = {pair: v for pair, v in chosen.items() if pair not in fresh}
    return _write(session, ctx, todo, per_doc), embedded + more


def _existing_scored(
    *,
    session: Session,
    ctx: ModelContext,
    rows: Sequence[DocumentRow],
    own: Mapping[int, DocumentVectors],
    found: dict[int, dict[int, Headed]],
    existing: Mapping[int, set[int]],
) -> int:
    """Add to each document's ``found`` its existing partners that are not among its
    candidates, scored again on their vectors as ``all`` mode scores (made again where
    stale), with their heads as ``documents`` holds them (a partner gone since is dropped);
    the texts embedded. Most often none: a new document has no rows yet."""
    todo = {row.id: existing[row.id] - found[row.id].keys() for row in rows}
    if not any(todo.values()):
        return 0
    others = repo.documents_by_id(session=session, ids=[o for t in todo.values() for o in t])
    vecs, embedded = document_vectors(session=session, ctx=ctx, rows=list(others.values()))
    for row in rows:
        them = sorted(o for o in todo[row.id] if o in others)
        scores = score_many(own[row.id], [vecs[o] for o in them], ctx.weights)
        found[row.id] |= {
            o: (repo.DocumentHead.of(others[o]), m) for o, m in zip(them, scores, strict=True)
        }
    return embedded


def nearest(
    *, session: Session, ctx: ModelContext, doc: DocumentVectors, limit: int
) -> list[Ranked]:
    """The ``limit`` documents of the other kind that rank first for ``doc`` by exact score
    on their stored vectors (``ranking.rank``), best first: of the ``index_oversample``
    times ``limit`` whose index entries are nearest its query where their kind has a basis
    (``index_pool``); else, and where the index returns fewer than it was asked for, of
    every stored one (``rank_pool``)."""
    return nearest_found(session=session, ctx=ctx, doc=doc, limit=limit)[0]


def nearest_found(
    *, session: Session, ctx: ModelContext, doc: DocumentVectors, limit: int
) -> Found:
    """``nearest``, with each document's head as the stored vectors it was ranked on
    recorded it (what ``match_top_k`` stores its match with)."""
    return rank_pool(
        session=session,
        ctx=ctx,
        doc=doc,
        pool=index_pool(session=session, ctx=ctx, doc=doc, limit=limit),
        limit=limit,
    )


def index_pool(
    *, session: Session, ctx: ModelContext, doc: DocumentVectors, limit: int
) -> list[repo.StoredVectors] | None:
    """Stored vectors of the ``index_oversample`` times ``limit`` documents of the other kind
    whose index entries are nearest ``doc``'s query (``repository.vectors.nearest_vectors``:
    the index query reads them); None where their kind has no basis yet."""
    kind = other_kind(doc.kind)
    version = ctx.model_version_id
    entry_query, entry_dims = index_basis.query_entry(
        session=session, model_version_id=version, kind=kind, query=ctx.query_vector(doc)
    )
    if entry_query is None or entry_dims is None:
        return None
    return repo.nearest_vectors(
        session=session,
        model_version_id=version,
        kind=kind,
        entry_query=entry_query,
        entry_dims=entry_dims,
        limit=limit * ctx.scoring.index_oversample,
        ef_search=ctx.scoring.ef_search,
        probes=index_basis.probes(
            session=session, model_version_id=version, kind=kind, scoring=ctx.scoring
        ),
    )


def rank_pool(
    *,
    session: Session,
    ctx: ModelContext,
    doc: DocumentVectors,
    pool: Sequence[repo.StoredVectors] | None,
    limit: int,
) -> Found:
    """The ``limit`` best for ``doc`` of the ``pool`` (``index_pool``), by exact score on
    their stored vectors, with their heads; of every stored document of the other kind,
    read in pages, where there is no pool or it holds fewer entries than the index was asked
    for."""
    version = ctx.model_version_id
    asked = min(repo.MAX_EF_SEARCH, limit * ctx.scoring.index_oversample)
    if pool is not None and len(pool) >= asked:
        return _found(rank(doc, pool, ctx.weights, limit), _heads(pool))
    kind = other_kind(doc.kind)
    best: Found = ([], {})
    after = seen = 0
    while True:
        page = repo.vector_page(
            session=session, model_version_id=version, kind=kind, after=after, n=EXACT_PAGE
        )
        ranked = merge(best[0], rank(doc, page, ctx.weights, limit), limit)
        best = _found(ranked, best[1] | _heads(page))
        seen += len(page)
        if len(page) < EXACT_PAGE:
            break
        after = page[-1].document_id
    if pool is not None and seen > len(pool):
        # An HNSW graph left some entries unreachable (near-duplicates prune each other out
        # of their neighbours' lists; measured on the fault harness's resume variants,
        # tests/integration/test_nearest.py), or many are dead.
        log.warning(
            "the entry index of version %d's %ss returned %d of %d rows: answered by ranking"
            " all %d (entries unreachable in an HNSW graph, or many dead ones: REINDEX)",
            version,
            kind,
            len(pool),
            asked,
            seen,
        )
    return best


def _heads(stored: Iterable[repo.StoredVectors]) -> dict[int, repo.DocumentHead]:
    """Heads as stored vectors record them (the content they were made from), by row id."""
    return {s.document_id: repo.DocumentHead(s.document_id, s.kind, s.content_hash) for s in stored}


def _found(ranked: list[Ranked], heads: Mapping[int, repo.DocumentHead]) -> Found:
    """A ranking, with the heads of the documents in it."""
    return ranked, {i: heads[i] for i, _ in ranked}


def _beats(score_: float, kth: float | None) -> bool:
    return kth is None or score_ > kth


def _ranked(
    head: repo.DocumentHead, others: Sequence[tuple[repo.DocumentHead, MatchScore]]
) -> list[tuple[Pair, repo.DocumentHead, repo.DocumentHead, MatchScore]]:
    """``head``'s matches with ``others``, best first (no score last, then by id)."""
    out = []
    for o, m in others:
        r, j = (head, o) if head.kind == "resume" else (o, head)
        out.append(((r.id, j.id), r, j, m))
    out.sort(key=lambda t: (t[3].score is None, -(t[3].score or 0.0), t[0]))
    return out


def _write(
    session: Session, ctx: ModelContext, scored: Scored, per_doc: Counter[int] | None
) -> int:
    writes = [
        repo.MatchWrite(
            resume_id=r.id,
            job_id=j.id,
            score=m.score,
            pair_scores={p.value: s for p, s in m.pair_scores.items()},
            resume_hash=r.content_hash,
            job_hash=j.content_hash,
        )
        for r, j, m in scored.values()
    ]
    if not writes:
        return 0
    written = repo.upsert_matches(
        session=session, model_version_id=ctx.model_version_id, key=ctx.scoring_key, writes=writes
    )
    if per_doc is not None:
        per_doc.update(w.resume_id for w in writes)
        per_doc.update(w.job_id for w in writes)
    return written


def top_of(
    *, session: Session, ctx: ModelContext, rows: Sequence[DocumentRow]
) -> dict[int, list[TopMatch]]:
    """Each document's best ``scoring.result_top`` stored matches under this version (what a
    task result carries), by row id."""
    out: dict[int, list[TopMatch]] = {}
    for kind in ("resume", "job"):
        ids = [r.id for r in rows if r.kind == kind]
        found = repo.top_matches(
            session=session,
            model_version_id=ctx.model_version_id,
            side=kind,
            ids=ids,
            n=ctx.scoring.result_top,
        )
        for i, tops in found.items():
            out[i] = [
                TopMatch(id=t.other_id, score=t.score, pair_scores=t.pair_scores) for t in tops
            ]
    return out


def score_resume(
    *, session: Session, ctx: ModelContext, resume_id: str, job_ids: Sequence[str] | None = None
) -> tuple[int, int, list[TopMatch]] | None:
    """One resume: against the given jobs (every one of them, exactly), or the configured way
    (``score_documents``). None: no such resume."""
    resume = repo.get_document(session=session, kind="resume", external_id=resume_id)
    if resume is None:
        return None
    if job_ids is not None:
        jobs = repo.list_documents(session=session, kind="job", external_ids=job_ids)
        out = score_pairs(session=session, ctx=ctx, resumes=[resume], jobs=jobs)
    else:
        out = score_documents(session=session, ctx=ctx, rows=[resume])
    return *out, top_of(session=session, ctx=ctx, rows=[resume])[resume.id]


def score_job(
    *, session: Session, ctx: ModelContext, job_id: str
) -> tuple[int, int, list[TopMatch]] | None:
    """One job, the configured way (``score_documents``). None: no such job."""
    job = repo.get_document(session=session, kind="job", external_id=job_id)
    if job is None:
        return None
    out = score_documents(session=session, ctx=ctx, rows=[job])
    return *out, top_of(session=session, ctx=ctx, rows=[job])[job.id]
