"""Reads and idempotent writes, one module per noun: documents, embeddings, matches,
failures, deliveries, the model registry, labels (and the stored split).

Every function takes ``session`` keyword-only and never commits: the caller (a task, the
CLI) owns the transaction. The package is used as one namespace,
``from jobfit.shared import repository as repo; repo.upsert_documents(...)``; the names
below are its public surface.
"""

from jobfit.shared.repository.deliveries import Delivery, begin_deliveries, set_delivery_state
from jobfit.shared.repository.documents import (
    DocStatus,
    get_document,
    list_documents,
    parse_document,
    upsert_document,
    upsert_documents,
)
from jobfit.shared.repository.embeddings import insert_embeddings, load_embeddings, lock_texts
from jobfit.shared.repository.failures import MAX_FAILED_PAYLOAD, Failure, record_failed_messages
from jobfit.shared.repository.labels import (
    LabelIn,
    assign_splits,
    label_count,
    list_labels,
    list_pair_labels,
    pair_hash,
    split_parts,
    upsert_labels,
    upsert_pair_labels,
)
from jobfit.shared.repository.matches import (
    MatchWrite,
    RankedMatch,
    fresh_match_keys,
    ranked,
    scoring_key,
    upsert_matches,
)
from jobfit.shared.repository.registry import (
    PAIR_WEIGHTS,
    PROMOTION,
    ModelInfo,
    ModelStatus,
    active_model_version,
    ensure_model_version,
    ensure_served_version,
    get_version,
    insert_model_version,
    list_versions,
    pair_weights,
    previous_active,
    promote,
    record_load_error,
    record_promotion,
    set_metrics,
)

__all__ = [
    "MAX_FAILED_PAYLOAD",
    "PAIR_WEIGHTS",
    "PROMOTION",
    "Delivery",
    "DocStatus",
    "Failure",
    "LabelIn",
    "MatchWrite",
    "ModelInfo",
    "ModelStatus",
    "RankedMatch",
    "active_model_version",
    "assign_splits",
    "begin_deliveries",
    "ensure_model_version",
    "ensure_served_version",
    "fresh_match_keys",
    "get_document",
    "get_version",
    "insert_embeddings",
    "insert_model_version",
    "label_count",
    "list_documents",
    "list_labels",
    "list_pair_labels",
    "list_versions",
    "load_embeddings",
    "lock_texts",
    "pair_hash",
    "pair_weights",
    "parse_document",
    "previous_active",
    "promote",
    "ranked",
    "record_failed_messages",
    "record_load_error",
    "record_promotion",
    "scoring_key",
    "set_delivery_state",
    "set_metrics",
    "split_parts",
    "upsert_document",
    "upsert_documents",
    "upsert_labels",
    "upsert_matches",
    "upsert_pair_labels",
]
