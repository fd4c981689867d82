"""Field embeddings: one vector per (model version, text hash), shared by every document
that has the text, in a pgvector ``vector`` column. Read back in pgvector's binary form
(``vector_send``, over the binary wire format: ``repository.binary``; no text parsing;
``workers.scoring.from_pgvector`` decodes it), written from float sequences (numpy arrays or
lists)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobfit.shared.orm import FieldEmbeddingRow, table_of, utcnow
from jobfit.shared.repository.binary import binary_rows
from jobfit.shared.repository.chunks import chunked

# Stored vectors of texts: one statement text whatever the hashes (``repository.binary``).
_LOAD_EMBEDDINGS = (
    "SELECT text_hash, vector_send(vector) FROM field_embeddings"
    " WHERE model_version_id = %(v)s AND text_hash = ANY(%(hashes)s::varchar[])"
)


def load_embeddings(
    *, session: Session, model_version_id: int, text_hashes: Iterable[str]
) -> dict[str, bytes]:
    """Stored vectors (pgvector's binary form) for those text hashes under one model version."""
    out: dict[str, bytes] = {}
    for part in chunked(sorted(set(text_hashes))):
        rows = binary_rows(session, _LOAD_EMBEDDINGS, {"v": model_version_id, "hashes": list(part)})
        out.update((h, bytes(v)) for h, v in rows)
    return out


def lock_texts(*, session: Session, model_version_id: int, text_hashes: Iterable[str]) -> None:
    """Transaction-scoped Postgres advisory locks on (model version, text), taken in one
    global order (no deadlock between two such callers). A worker that needs texts another
    worker is embedding waits for that commit, then finds them stored: each text reaches the
    model once per version."""
    keys = sorted(
        {
            int.from_bytes(
                hashlib.sha256(f"{model_version_id}:{h}".encode()).digest()[:8], "big", signed=True
            )
            for h in text_hashes
        }
    )
    # One statement: the locks are taken in the array's (sorted) order.
    for part in chunked(keys):
        session.execute(
            sql("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) k"),
            {"keys": list(part)},
        )


def insert_embeddings(
    *, session: Session, model_version_id: int, rows: Sequence[tuple[str, str, int, Any]]
) -> None:
    """Insert (text_hash, text, dim, vector) rows; a row another worker wrote first is kept."""
    if not rows:
        return
    now = utcnow()
    session.execute(
        insert(table_of(FieldEmbeddingRow)).on_conflict_do_nothing(
            index_elements=["model_version_id", "text_hash"]
        ),
        [
            {
                "model_version_id": model_version_id,
                "text_hash": h,
                "text": text,
                "dim": dim,
                "vector": vec,
                "created_at": now,
            }
            for h, text, dim, vec in sorted(rows, key=lambda r: r[0])
        ],
    )
