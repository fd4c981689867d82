"""What other services call. Validates before sending; needs Celery and pydantic, not torch.

from jobfit.shared.client import JobfitClient
client = JobfitClient()                      # settings from JOBFIT_* env
client.submit_job({"id": "J1", "title": "Data Engineer", "skills_required": ["SQL"]})
client.submit_resume({"id": "R1", "skills": ["SQL", "Python"]})   # scored vs stored jobs
client.submit_label("R1", "J1", 0.8)         # joins the next training set
client.top_jobs("R1", k=10)                  # read from Postgres: no worker, no torch
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from celery.result import AsyncResult
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared.celery_app import (
    EVALUATE,
    INGEST_JOB,
    INGEST_JOBS,
    INGEST_RESUME,
    INGEST_RESUMES,
    RESCORE,
    RETRAIN,
    SCORE_JOB,
    SCORE_RESUME,
    SUBMIT_LABEL,
    JobfitCelery,
    create_celery_app,
)
from jobfit.shared.config import Settings
from jobfit.shared.db import connect
from jobfit.shared.repository.matches import RankedMatch, ranked
from jobfit.shared.schemas import (
    MAX_BULK_DOCUMENTS,
    CandidatesRequest,
    EvaluateRequest,
    InvalidMessageError,
    JobDocument,
    LabelMessage,
    MatchRequest,
    RescoreRequest,
    ResumeDocument,
    RetrainRequest,
    validate_message,
)

# The most matches one read returns.
MAX_TOP = 1000


def _doc_repr(doc: ResumeDocument | JobDocument) -> str:
    """What Flower shows instead of the whole document."""
    size = len(doc.model_dump_json())
    return f"<{doc.kind} {doc.id!r} {size / 1000:.1f} kB>"


class JobfitClient:
    """Enqueue documents and scoring requests to the workers."""

    def __init__(self, settings: Settings | None = None, app: JobfitCelery | None = None) -> None:
        self.app = app or create_celery_app(settings, with_tasks=False)
        self._sessions: sessionmaker[Session] | None = None

    # --- reads: answered from Postgres as the read path's role (``JOBFIT_DB__READ_URL``,
    # else ``JOBFIT_DB__URL``), no worker needed ---------------------------------------

    def top_jobs(
        self, resume_id: str, k: int = 10, *, version: str | None = None
    ) -> list[RankedMatch]:
        """A stored resume's best ``k`` jobs, best first, with their pair scores; under
        ``version``, by default the active one (once it has scored the resume)."""
        req = validate_message(MatchRequest, {"resume_id": resume_id})
        return self._ranked(resume_id=req.resume_id, job_id=None, k=k, version=version)

    def top_candidates(
        self, job_id: str, k: int = 10, *, version: str | None = None
    ) -> list[RankedMatch]:
        """A stored job's best ``k`` resumes, best first (as ``top_jobs``)."""
        req = validate_message(CandidatesRequest, {"job_id": job_id})
        return self._ranked(resume_id=None, job_id=req.job_id, k=k, version=version)

    def _ranked(
        self, *, resume_id: str | None, job_id: str | None, k: int, version: str | None
    ) -> list[RankedMatch]:
        if not 1 <= k <= MAX_TOP:
            raise InvalidMessageError(f"k must be between 1 and {MAX_TOP}, got {k}")
        if self._sessions is None:
            self._sessions = connect(self.app.settings, reader=True)
        with self._sessions() as session:
            return ranked(
                session=session, resume_id=resume_id, job_id=job_id, model_version=version, top=k
            )

    def close(self) -> None:
        """Release the read path's database connections (the Celery app stays usable)."""
        if self._sessions is not None:
            bind = self._sessions.kw.get("bind")
            if bind is not None:
                bind.dispose()
            self._sessions = None

    # --- writes: messages to the workers ------------------------------------------------

    def _send(self, name: str, kwargs: dict[str, Any], kwargsrepr: str) -> AsyncResult:
        return self.app.send_task(name, kwargs=kwargs, kwargsrepr=kwargsrepr)

    def _send_document(
        self, name: str, doc: ResumeDocument | JobDocument, score: bool
    ) -> AsyncResult:
        return self._send(
            name,
            {"document": doc.model_dump(mode="json"), "score": score},
            json.dumps({"document": _doc_repr(doc), "score": score}),
        )

    def submit_resume(
        self, document: ResumeDocument | Mapping[str, Any] | str, *, score: bool = True
    ) -> AsyncResult:
        """Store a resume; by default score it against every stored job."""
        return self._send_document(INGEST_RESUME, validate_message(ResumeDocument, document), score)

    def submit_job(
        self, document: JobDocument | Mapping[str, Any] | str, *, score: bool = True
    ) -> AsyncResult:
        """Store a job; by default score every stored resume against it."""
        return self._send_document(INGEST_JOB, validate_message(JobDocument, document), score)

    def _send_documents(
        self,
        name: str,
        docs: Sequence[ResumeDocument | JobDocument],
        score: bool,
        per_message: int,
    ) -> list[AsyncResult]:
        if not 1 <= per_message <= MAX_BULK_DOCUMENTS:
            raise ValueError(f"per_message must be 1 to {MAX_BULK_DOCUMENTS}, got {per_message}")
        out = []
        for i in range(0, len(docs), per_message):
            part = docs[i : i + per_message]
            out.append(
                self._send(
                    name,
                    {"documents": [d.model_dump(mode="json") for d in part], "score": score},
                    json.dumps({"documents": f"<{len(part)} {part[0].kind}s>", "score": score}),
                )
            )
        return out

    def submit_resumes(
        self,
        documents: Sequence[ResumeDocument | Mapping[str, Any] | str],
        *,
        score: bool = True,
        per_message: int = MAX_BULK_DOCUMENTS,
    ) -> list[AsyncResult]:
        """Store many resumes, ``per_message`` to a message (bulk: one delivery, one result
        and one Flower event per message; each result lists its documents' outcomes, in
        order: ``BulkIngestResult``). Every document is validated first: one invalid
        document raises here and nothing is sent."""
        docs = [validate_message(ResumeDocument, d) for d in documents]
        return self._send_documents(INGEST_RESUMES, docs, score, per_message)

    def submit_jobs(
        self,
        documents: Sequence[JobDocument | Mapping[str, Any] | str],
        *,
        score: bool = True,
        per_message: int = MAX_BULK_DOCUMENTS,
    ) -> list[AsyncResult]:
        """Store many jobs, ``per_message`` to a message (as ``submit_resumes``)."""
        docs = [validate_message(JobDocument, d) for d in documents]
        return self._send_documents(INGEST_JOBS, docs, score, per_message)

    def request_matches(self, resume_id: str, job_ids: Sequence[str] | None = None) -> AsyncResult:
        """Score a stored resume against the given jobs (all stored jobs by default)."""
        req = validate_message(
            MatchRequest, {"resume_id": resume_id, "job_ids": list(job_ids) if job_ids else None}
        )
        kwargs = req.model_dump(mode="json")
        return self._send(SCORE_RESUME, kwargs, json.dumps(kwargs)[:500])

    def request_candidates(self, job_id: str) -> AsyncResult:
        """Score every stored resume against a stored job."""
        req = validate_message(CandidatesRequest, {"job_id": job_id})
        kwargs = req.model_dump(mode="json")
        return self._send(SCORE_JOB, kwargs, json.dumps(kwargs))

    def submit_label(
        self, resume_id: str, job_id: str, score: float, *, source: str = "client"
    ) -> AsyncResult:
        """A match label (0..1) for the next training set; the latest label of a pair wins."""
        msg = validate_message(
            LabelMessage,
            {"resume_id": resume_id, "job_id": job_id, "score": score, "source": source},
        )
        kwargs = {"label": msg.model_dump(mode="json")}
        return self._send(SUBMIT_LABEL, kwargs, json.dumps(kwargs))

    def retrain(self, **request: Any) -> AsyncResult:
        """Fine-tune a new model version (see ``RetrainRequest``); the ``train`` queue."""
        req = validate_message(RetrainRequest, request)
        kwargs = {"request": req.model_dump(mode="json")}
        return self._send(RETRAIN, kwargs, json.dumps(kwargs))

    def evaluate(self, version: str | None = None, split: str = "resume") -> AsyncResult:
        """Metrics of a model version on the stored evaluation split."""
        req = validate_message(EvaluateRequest, {"version": version, "split": split})
        kwargs = {"request": req.model_dump(mode="json")}
        return self._send(EVALUATE, kwargs, json.dumps(kwargs))

    def rescore(self, version: str | None = None) -> AsyncResult:
        """Refresh every stored match with the active model version (embed queue)."""
        req = validate_message(RescoreRequest, {"version": version})
        kwargs = {"request": req.model_dump(mode="json")}
        return self._send(RESCORE, kwargs, json.dumps(kwargs))


def await_or_resend(
    sent: Mapping[str, AsyncResult],
    resend: Callable[[str], AsyncResult],
    *,
    timeout_s: float = 120.0,
    rounds: int = 3,
    poll_s: float = 0.5,
) -> tuple[dict[str, AsyncResult], int]:
    """End-to-end at-least-once for a producer: wait for each message's result; a message
    still unanswered after ``timeout_s`` is sent again with ``resend(key)`` (ingest and
    scoring are idempotent, so a slow original that also completes does no harm), for up to
    ``rounds`` rounds. Redis's transport can lose the message a worker is being given at the
    moment it is killed (kombu's BRPOP has no reliable variant); this closes that gap from
    the producer's side. Returns the latest result of each key and how many were re-sent."""
    current = dict(sent)
    resent = 0
    for round_ in range(rounds + 1):
        deadline = time.monotonic() + timeout_s
        waiting = {k for k, r in current.items() if not r.ready()}
        while waiting and time.monotonic() < deadline:
            time.sleep(poll_s)
            waiting = {k for k in waiting if not current[k].ready()}
        if not waiting or round_ == rounds:
            break
        for k in sorted(waiting):
            current[k] = resend(k)
            resent += 1
    return current, resent


def read_documents(path: str | Path) -> list[dict[str, Any]]:
    """Documents from a JSON Lines file, a JSON array or a single JSON object."""
    docs = []
    for where, doc in numbered_documents(path):
        if isinstance(doc, InvalidMessageError):
            raise InvalidMessageError(f"{path}:{where.split()[-1]}: {doc}")
        docs.append(doc)
    return docs


def numbered_documents(path: str | Path) -> list[tuple[str, Any]]:
    """Each document of a file with where it is (``line N`` of JSON Lines, ``item N`` of an
    array); a line that is not JSON comes as its ``InvalidMessageError``, so that a caller
    can report every bad line at once."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise InvalidMessageError(f"{path}: expected a JSON array")
        return [(f"item {n}", d) for n, d in enumerate(data, start=1)]
    if stripped.startswith("{") and "\n{" not in stripped:
        return [("line 1", json.loads(text))]
    out: list[tuple[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            out.append((f"line {n}", InvalidMessageError(f"invalid JSON: {exc.msg}")))
    return out
