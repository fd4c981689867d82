"""One typed settings object, read from the environment (``JOBFIT_*``) or ``.env``.

Nested groups use ``__``: ``JOBFIT_DB__URL``, ``JOBFIT_BROKER__URL``, ``JOBFIT_MODEL__PATH``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "all-mpnet-base-v2"


class PairType(StrEnum):
    """The (resume field, job field) pairs a match is scored on (``shared.fields``): the
    seed's four, then four from fields those ignore. Values fit ``pair_scores.pair_type``
    (20 characters)."""

    SKILLS = "skills"
    POSITIONS = "positions"
    DEGREES = "degrees"
    EXPERIENCE = "experience"
    OBJECTIVE = "objective"  # career objective <-> responsibilities
    MAJORS = "majors"  # majors <-> education requirement
    DUTIES = "duties"  # skills <-> responsibilities
    CERTIFICATIONS = "certifications"  # certifications <-> skills required


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "jobfit"


class DatabaseSettings(BaseModel):
    """Where jobfit's Postgres is, as which role (README "Deploy": the owner runs the
    migrations, the workers write as the writer, the read path reads as the reader)."""

    # Secrets (passwords in URLs) stay out of repr(): settings may reach a log or traceback.
    # This process's role: the owner for `jobfit db upgrade`, the writer for workers.
    url: str = Field(default="postgresql+psycopg://postgres@127.0.0.1:5432/jobfit", repr=False)
    # The read path's role (JobfitClient.top_jobs / top_candidates, `jobfit matches`,
    # `jobfit candidates`, `jobfit metrics`): a reader that can only SELECT. None: ``url``.
    read_url: str | None = Field(default=None, repr=False)
    # The writer role `jobfit db grant` creates or updates (its user name and password);
    # only the owner's process (compose's `migrate`) needs it. None: no writer is managed.
    writer_url: str | None = Field(default=None, repr=False)
    echo: bool = False
    pool_size: int = 5

    @field_validator("url", "read_url", "writer_url")
    @classmethod
    def normalise_url(cls, v: str | None) -> str | None:
        """Accept the DSNs people paste (``postgres://``, ``postgresql://``) and pin psycopg 3."""
        if v is None:
            return None
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    @property
    def reading_url(self) -> str:
        """The URL the read path connects with: ``read_url``, else ``url``."""
        return self.read_url or self.url


class BrokerSettings(BaseModel):
    url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    result_backend: str | None = Field(default=None, repr=False)
    # Prefix for every Redis key of the transport: lets several deployments (or test runs)
    # share one Redis without stealing each other's messages.
    key_prefix: str = ""
    # Redis: a killed worker's messages come back this long after its last lease renewal
    # (a live worker renews those it holds, every sixth of this: a running retrain of any
    # length is never delivered twice; shared.redis_transport). Not used on RabbitMQ.
    visibility_timeout_s: int = Field(default=60, ge=2)
    # A message delivered this many times without finishing (its worker died each time) is
    # dead-lettered to failed_messages instead of being run again.
    max_deliveries: int = Field(default=5, ge=1)
    result_expires_s: int = 3600

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.url


class ModelSettings(BaseModel):
    # A local directory; nothing is fetched from a hub at run time.
    path: Path | None = None
    # Or a hub id (e.g. "sentence-transformers/all-MiniLM-L6-v2"), read from the local hub
    # cache; downloaded only where HF_HUB_OFFLINE=0 is set explicitly.
    hub_id: str | None = None
    name: str = DEFAULT_MODEL_NAME
    store: Path = Field(default_factory=lambda: _default_home() / "models")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fp16: bool = True  # only applied on CUDA
    # Texts are sorted by token length and packed into forward passes of at most this many
    # padded tokens (count x longest). None: 512 on CPU (measured on 2 cores, mpnet on the
    # sample: 4.9 s at 512 vs 7.1 s at a fixed batch of 16, 10.5 s at 4096; CPU attention
    # gets slower per token as batches grow), 16384 on CUDA.
    token_budget: int | None = Field(default=None, ge=16)
    # What one more forward pass costs, in padded tokens: the packer cuts a batch's sorted
    # texts where padding would cost more than another pass
    # (workers.embedders.packing.pack_by_tokens).
    # None: 64 on CPU (2 cores, MiniLM: a pass of 1 x 8 tokens takes 16 ms, each further
    # token ~0.25 ms), 1024 on CUDA (kernel launches dominate small passes). 0: greedy fill.
    pass_overhead_tokens: int | None = Field(default=None, ge=0)
    # The most texts in one forward pass (and the batch of the plain ``encode`` baseline).
    # None: 16 on CPU, 128 on CUDA.
    batch_size: int | None = None
    # auto: ONNX fp32 on a CPU where its export is exact (mean cosine to torch >= 0.9999 on
    # the check set, checked when exported at a worker's first load), else torch; torch (fp16)
    # on CUDA. torch (fp32 on CPU, fp16 on CUDA), onnx (fp32, onnxruntime) or onnx-int8
    # (dynamic int8 quantisation for this CPU's features; served only if it passes its gate,
    # see ``jobfit model export-onnx``). Exports live in the model store, in ``onnx/``.
    # instant: no model at all, one fixed vector for every text (meaningless scores, kept under
    # their own version): a benchmarking aid, the pipeline's own ceiling (``make bench``).
    backend: Literal["auto", "torch", "onnx", "onnx-int8", "instant"] = "auto"
    # CPU threads for the model (torch / onnxruntime); None: the library default (all cores).
    # Several worker processes on one machine: give each cores / processes.
    threads: int | None = Field(default=None, ge=1)
    max_seq_length: int = 384
    warmup: bool = True
    # Embed workers serve the registry's active version and look for a newer one at most
    # this often (at the start of a task): the bound on how long a promotion takes to reach
    # them. 0 checks before every task.
    reload_interval_s: float = 5.0

    def resolved_path(self) -> Path:
        """The model directory, unless a hub id is set (see
        shared.model_store.resolve_model_path)."""
        return self.path if self.path is not None else self.store / self.name


class BatchSettings(BaseModel):
    """Cross-task batching on embed workers: ingest messages are gathered into one batch of
    at most ``max_tasks`` messages, or whatever arrived within ``max_wait_s`` while the worker
    was busy (an idle worker takes what it has at once); its texts are
    embedded together and its rows written in one transaction, then its messages acked."""

    # 256: a bulk load then runs in few large batches, which pack almost as well as one
    # encode of every text (measured on the real dataset, mpnet on 2 cores: 0.87x of the raw
    # packed encode's throughput end to end at 128, 0.97x at 256). Lower it where a message
    # that arrives during a bulk load must not wait behind a large batch (two, at most: the
    # running one and the next one, reserved meanwhile).
    max_tasks: int = Field(default=256, ge=1)
    max_wait_s: float = Field(default=0.05, gt=0)
    # Documents per batch (one transaction, one ``encode``) where bulk messages (up to
    # ``schemas.MAX_BULK_DOCUMENTS`` documents each) fill it: whole messages, at most this
    # many documents unless one message has more. At most the repository's statement chunk
    # (1,000 rows), so a batch's documents are locked in one statement, in one order.
    max_documents: int = Field(default=512, ge=1, le=1000)


def equal_weights() -> dict[PairType, float]:
    """Every pair type weighs the same: the rule of a version trained without weights."""
    return dict.fromkeys(PairType, 1.0)


def complete_weights(v: Mapping[str, float] | Mapping[PairType, float]) -> dict[PairType, float]:
    """Weights for every pair type (a missing one weighs 0); refuses negative ones."""
    if any(w < 0 for w in v.values()):
        raise ValueError("pair weights must be >= 0")
    return {p: float(v.get(p, 0.0)) for p in PairType}


class ScoringSettings(BaseModel):
    # Weight of each pair type in the match score (a weighted mean of the pair cosines used).
    # None: the served model version's own weights (learned in training and stored with the
    # version in the registry; equal weights for a version that has none). Set, they
    # override every version's (JOBFIT_SCORING__WEIGHTS='{"skills": 2, "positions": 1}').
    weights: dict[PairType, float] | None = None
    # all: every (resume, job) is scored and stored (small corpora, evaluation).
    # top_k: a document's retrieval vector finds ``candidates`` documents of the other kind
    # through the entry index; they are scored exactly and the document's best ``top_k`` are
    # stored, plus the pairs where it enters a candidate's own top K (README "Matching at
    # scale": why these defaults).
    mode: Literal["all", "top_k"] = "top_k"
    top_k: int = Field(default=100, ge=1, le=1000)
    candidates: int = Field(default=200, ge=1, le=1000)
    # The index over each (version, kind)'s projected entries (README "Matching at scale":
    # among 1,000,000 resumes, a new job's recall@10 0.99 in IVFFlat, its index query 38 ms
    # at p95 (scratch run, prewarmed; make bench-scale: README); among 100,000, 0.978 in HNSW
    # at ef_search 1,000 and 33 ms, on the 128-dimensional entries of an earlier default).
    # ivfflat: the entries in ceil(2 sqrt(n)) lists (k-means cells of the n entries it is
    # built on), rebuilt with twice the lists each time the kind has grown fourfold; a query
    # reads ``ivf_probes`` of its lists whole (at least 5,000 entries' worth). A list holds
    # sqrt(n) / 2 to sqrt(n) entries, so its cost grows with sqrt(n).
    # hnsw: a graph; its cost grows with log n, but recall stops short of 0.98 on this data.
    # An index of the other method, once built, stays until the version is replaced.
    index_method: Literal["ivfflat", "hnsw"] = "ivfflat"
    # How many of an IVFFlat index's lists a query reads (pgvector's ivfflat.probes; more
    # where those hold fewer than 5,000 entries in all). 80: 22 % of the 360 lists of
    # 100,000 resumes, an eighteenth of the 1,440 of 1,000,000, as workers rebuild them from
    # a basis fitted at 2,000 (recall@10 1.0 and 0.99: make bench-scale, README).
    ivf_probes: int = Field(default=80, ge=1, le=32_768)
    # HNSW search breadth (pgvector's hnsw.ef_search, at most 1,000); at least ``candidates``.
    ef_search: int = Field(default=1000, ge=1, le=1000)
    # HNSW build settings of each (version, kind) index (README "Matching at scale": among
    # 100,000 resumes, on 128-dimensional index entries, 48 / 400 with a pool re-ranked by
    # the full retrieval vectors put 0.976 of a new job's true top 10 into its candidates
    # (0.98 with a basis fitted on 10,000), 32 / 200 without it 0.964).
    hnsw_m: int = Field(default=48, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=400, ge=4, le=1000)
    # The index holds each retrieval vector projected on a basis of this many dimensions,
    # fitted per (version, kind) on its stored vectors once it has ``index_fit_at`` documents
    # (``workers.index_basis``); below that a query ranks them all exactly. 256: among
    # 1,000,000 resumes the 400 nearest entries hold 0.99 of a new job's true top 10; with
    # 128 dimensions 0.96 (and 1,000 entries to read back for 0.99).
    index_dims: int = Field(default=256, ge=8, le=1024)
    # Also where an IVFFlat index's rebuilds fall (``index_basis.build_index``: each time
    # ceil(2 sqrt(n)) reaches twice its lists): from 2,000, a kind of 1,000,000 is read
    # through 1,440 lists built at 517,681 (about 56,000 entries a query); from 1,000 it
    # would be 1,024 lists built at 261,633 (78,000, computed), though 1,000 gives more
    # lists between 261,633 and 517,680 and between 1,047,553 and 2,072,160. 1,000's gain
    # below 2,000 documents (a new resume's ingest among 1,000 jobs: 32.4 ms against 42.5,
    # bench runs 6b58f26 and 7beaaca) is not taken for that phase (README "Matching at
    # scale").
    index_fit_at: int = Field(default=2000, ge=2)
    # The index returns this many times ``candidates`` entries (at most 1,000), IVFFlat or
    # HNSW, whose stored field vectors rank them exactly (``workers.ranking``): the best
    # ``candidates`` are scored and stored. Each costs its field vectors read back (about
    # 25 us), so the pool is as small as the recall allows: 400 (3 times: recall@10 0.993
    # instead of 0.99 among 1,000,000 resumes, no faster; README "Matching at scale").
    index_oversample: int = Field(default=2, ge=1, le=5)
    # How many best matches a task result carries (the rest: JobfitClient.top_jobs).
    result_top: int = Field(default=10, ge=0, le=1000)

    @field_validator("weights")
    @classmethod
    def check_weights(cls, v: dict[PairType, float] | None) -> dict[PairType, float] | None:
        return None if v is None else complete_weights(v)

    @model_validator(mode="after")
    def check_hnsw(self) -> ScoringSettings:
        # pgvector refuses an index whose ef_construction is below twice its m.
        if self.hnsw_ef_construction < 2 * self.hnsw_m:
            raise ValueError(
                f"hnsw_ef_construction ({self.hnsw_ef_construction}) must be at least twice"
                f" hnsw_m ({self.hnsw_m})"
            )
        return self

    def served_weights(self, version_weights: Mapping[str, float] | None) -> dict[PairType, float]:
        """The weights a worker scores with: the override, else the version's, else equal."""
        if self.weights is not None:
            return dict(self.weights)
        if version_weights:
            return complete_weights(version_weights)
        return equal_weights()


TrainTarget = Literal["rank", "label"]


class TrainSettings(BaseModel):
    # head: encoder frozen, a head trained on its cached embeddings (minutes on a CPU).
    # full: sentence-transformers' trainer on all weights (use a GPU). Both train the served
    # rule: a match's weighted mean pair cosine against its target (workers.training).
    mode: Literal["head", "full", "full+head"] = "head"
    epochs: int = Field(default=1, ge=1)
    # What a match's score is trained towards: rank, the label's rank among the training
    # matches on the label's scale (a monotone map of the label; measured better on held-out
    # resumes and jobs, README "Which path on which hardware"), or the label itself.
    target: TrainTarget = "rank"
    # A candidate becomes active only if its match-level Spearman on the stored evaluation
    # split beats the active version's by more than this.
    promote_margin: float = 0.005
    # ... and is refused if it is worse than the active version by more than this on any
    # split it is judged on (held-out resumes, held-out jobs).
    regress_margin: float = 0.01
    device: str = "auto"
    # Refresh stored matches with the new version after a promotion.
    rescore_after_promotion: bool = True


class FlowerSettings(BaseModel):
    # "user:password" (several: comma-separated). Flower refuses to start without it unless
    # `jobfit flower --insecure-dev`. Flower leaves /metrics and /healthcheck open anyway.
    basic_auth: str | None = Field(default=None, repr=False)
    address: str = "127.0.0.1"
    port: int = 5555
    # Keeps task history across restarts.
    db: Path = Field(default_factory=lambda: _default_home() / "flower.db")


class MetricsSettings(BaseModel):
    # `jobfit metrics`: queue depths, the active version, failures, matches, embeddings.
    address: str = "127.0.0.1"
    port: int = 9808
    # A worker's own metrics (batch sizes, ingest outcomes: tasks.worker_metrics); 0: off.
    worker_address: str = "127.0.0.1"
    worker_port: int = 0


class Settings(BaseSettings):
    """Everything configurable in jobfit, passed down as an argument."""

    model_config = SettingsConfigDict(
        env_prefix="JOBFIT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    env: Literal["dev", "test", "prod"] = "dev"
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def refuse_placeholder_secrets(self) -> Settings:
        if self.env == "prod":
            urls = (self.db.url, self.db.read_url, self.db.writer_url, self.broker.url)
            for url in urls:
                if url is not None and "changeme" in url:
                    raise ValueError("placeholder secret 'changeme' in a prod URL")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
