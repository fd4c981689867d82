"""``python -m tools bench`` (``make bench``): the pipeline against its limit, each figure a
ratio against a baseline measured in the same run on the same texts.

The documents are every resume and job of the real dataset (344 + 28, 1,236 unique field
texts) when its CSV is given, else the bundled sample (a 1-second run on MiniLM: that
measures start-up latency more than throughput).

raw        one direct ``SentenceTransformer.encode`` of the unique field texts (the library
           call, batch ``model.batch_size``: the issue's "raw encode"), and the same texts
           through the worker's own encoder (packed by token budget) without any pipeline:
           the stricter limit, since the packing is the pipeline's own optimisation.
e2e        submit the documents -> worker(s) -> rows committed, on a fresh database (so every
           text is embedded once, through the pipeline): ``ingest`` waits for documents and
           embeddings (score=False), ``ingest+score`` also for every match row (all 9,544 on
           the dataset). Each is given against both raw figures.
latency    one resume scored against every stored job on an idle worker, p50/p95 of N runs:
           ``cold`` (its texts are new: embedded first) and ``warm`` (texts already embedded).
rss        peak resident memory of each worker process (VmHWM), after the runs.
workers    e2e ingest with 1 and with 2 worker processes (threads split between them).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from celery.result import AsyncResult
from rich.console import Console
from sqlalchemy import create_engine, func, make_url, select, text

from jobfit.shared.celery_app import EMBED_QUEUE, JobfitCelery, create_celery_app
from jobfit.shared.client import JobfitClient, read_documents
from jobfit.shared.config import Settings
from jobfit.shared.db import ensure_database, upgrade
from jobfit.shared.fields import field_texts
from jobfit.shared.model_store import version_of
from jobfit.shared.orm import DocumentRow, MatchRow
from jobfit.shared.sample import SAMPLE_DIR
from jobfit.shared.schemas import MAX_BULK_DOCUMENTS, JobDocument, ResumeDocument
from jobfit.workers.embedders.base import ModelSpec
from jobfit.workers.embedders.torch import SentenceTransformerEmbedder
from tools.demo import worker_process

Docs = list[dict[str, Any]]
LATENCY_RUNS = 20
# Celery's own no-op (a built-in task of every app: returns its arguments).
NOOP_TASK = "celery.accumulate"
CEILING_ROUNDS = 5


def unique_texts(resumes: Docs, jobs: Docs) -> list[str]:
    docs: list[ResumeDocument | JobDocument] = [ResumeDocument.model_validate(r) for r in resumes]
    docs += [JobDocument.model_validate(j) for j in jobs]
    return sorted({t for d in docs for t in field_texts(d).values()})


def load_documents(dataset: Path | None) -> tuple[Docs, Docs]:
    """The bundled sample, or every resume and job of the real dataset's CSV."""
    if dataset is None:
        return read_documents(SAMPLE_DIR / "resumes.jsonl"), read_documents(
            SAMPLE_DIR / "jobs.jsonl"
        )
    from tools.dataset import read_dataset

    data = read_dataset(dataset)
    return (
        [r.model_dump(mode="json", exclude_defaults=True) for r in data.resumes],
        [j.model_dump(mode="json", exclude_defaults=True) for j in data.jobs],
    )


def _rate(n: int, seconds: float) -> dict[str, float]:
    return {"s": round(seconds, 3), "sentences_per_s": round(n / seconds, 1)}


def raw_encode(spec: ModelSpec, texts: list[str]) -> dict[str, Any]:
    """Both raw figures, each after a warm-up."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(spec.path), device=spec.device, local_files_only=True)
    model.max_seq_length = spec.max_seq_length
    model.encode(texts[:8], batch_size=spec.batch_size)
    t0 = time.perf_counter()
    model.encode(texts, batch_size=spec.batch_size, normalize_embeddings=True)
    st_s = time.perf_counter() - t0
    del model
    embedder = SentenceTransformerEmbedder(spec)
    embedder.warm_up()
    t0 = time.perf_counter()
    embedder.encode(texts)
    packed_s = time.perf_counter() - t0
    return {
        "st_encode": {**_rate(len(texts), st_s), "batch_size": spec.batch_size},
        "packed_encode": {**_rate(len(texts), packed_s), "token_budget": spec.token_budget},
    }


def versus(raw: dict[str, Any], seconds: float) -> dict[str, float]:
    """Throughput of a run against each raw figure (>= 1: faster than that raw encode)."""
    return {
        f"throughput_vs_{name}": round(figure["s"] / seconds, 3) for name, figure in raw.items()
    }


@dataclass
class Stage:
    """A fresh database and broker key prefix, and the environment that points workers at it."""

    settings: Settings
    app: JobfitCelery
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)
    hostnames: list[str] = field(default_factory=list)


@contextlib.contextmanager
def fresh_stage(settings: Settings, model_path: Path, **env: str) -> Iterator[Stage]:
    run = uuid.uuid4().hex[:8]
    db_url = make_url(settings.db.url).set(database=f"jobfit_bench_{run}")
    s = settings.model_copy(deep=True)
    s.db.url = db_url.render_as_string(hide_password=False)
    s.broker.key_prefix = f"jobfit-bench-{run}:"
    ensure_database(s.db.url)
    try:
        upgrade(s)
        yield Stage(
            settings=s,
            app=create_celery_app(s),
            env={
                "JOBFIT_DB__URL": s.db.url,
                "JOBFIT_BROKER__KEY_PREFIX": s.broker.key_prefix,
                "JOBFIT_MODEL__PATH": str(model_path),
                **env,
            },
        )
    finally:
        admin = create_engine(db_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(str(db_url.database))
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def workers(
    stage: Stage, console: Console, count: int, launcher: Sequence[str] = ("-m", "jobfit")
) -> Iterator[None]:
    """``count`` embed worker processes; records their pids (for the RSS reading) and
    hostnames."""
    with contextlib.ExitStack() as stack:
        for i in range(count):
            hostname = f"bench{i}@{uuid.uuid4().hex[:6]}"
            proc = stack.enter_context(
                worker_process(
                    stage.app,
                    console,
                    stage.env,
                    queues="embed",
                    hostname=hostname,
                    launcher=launcher,
                )
            )
            stage.pids.append(proc.pid)
            stage.hostnames.append(hostname)
        yield


def peak_rss_mb(pids: Sequence[int]) -> list[float]:
    """Peak resident set (VmHWM) of each process and its children, in MiB."""
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            out.append(round(sum(_hwm_kb(p.pid) for p in procs) / 1024, 1))
    return out


def _hwm_kb(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def submit_all(
    stage: Stage,
    resumes: Docs,
    jobs: Docs,
    score: bool,
    *,
    bulk: bool = False,
    poll_s: float = 0.25,
) -> float:
    """Jobs then resumes (one per message, or with ``bulk`` in bulk messages); seconds from the
    first submit until every expected row is committed (documents, or match rows with
    ``score``). Waits by counting rows in Postgres a few times
    a second: a cheap wait, that takes no CPU from the worker on a small machine (a result
    per task and a busy progress bar cost the 2-core run ~7 %)."""
    from jobfit.shared.console import progress_bar

    row: Any = MatchRow if score else DocumentRow
    expected = len(resumes) * len(jobs) if score else len(resumes) + len(jobs)
    engine = create_engine(make_url(stage.settings.db.url))
    t0 = time.perf_counter()
    results = send_documents(stage, resumes, jobs, bulk=bulk, score=score)()
    try:
        with progress_bar(refresh_per_second=2) as bar:
            task = bar.add_task(f"{row.__tablename__} committed", total=expected)
            done, polls = 0, 0
            while done < expected:
                time.sleep(poll_s)
                with engine.connect() as conn:
                    done = conn.execute(select(func.count()).select_from(row)).scalar_one()
                bar.update(task, completed=done)
                polls += 1
                if polls % 40 == 0 and (failed := [r for r in results if r.failed()]):
                    raise RuntimeError(f"{len(failed)} task(s) failed: {failed[0].result!r}")
    finally:
        engine.dispose()
    seconds = time.perf_counter() - t0
    for r in results:  # every message was also answered
        r.get(timeout=600)
    return seconds


def latency(app: JobfitCelery, resumes: Docs, *, cold: bool) -> dict[str, float]:
    """One resume at a time against every stored job: p50/p95 of LATENCY_RUNS runs."""
    client = JobfitClient(app=app)
    times = []
    for i in range(LATENCY_RUNS):
        doc = dict(resumes[i % len(resumes)], id=f"latency-{cold}-{i}")
        if cold:  # texts nobody has embedded yet
            doc["skills"] = [*doc.get("skills", []), f"tool-{uuid.uuid4().hex[:6]}"]
            doc["positions"] = [*doc.get("positions", []), f"Role {i}"]
        t0 = time.perf_counter()
        out = client.submit_resume(doc).get(timeout=600)
        times.append(time.perf_counter() - t0)
        if out.get("status") not in {"created", "updated", "unchanged"}:
            raise RuntimeError(f"latency run failed: {out}")
    q = statistics.quantiles(times, n=20)
    return {"p50_s": round(statistics.median(times), 4), "p95_s": round(q[18], 4)}


def bench_model(
    settings: Settings,
    model_path: Path,
    console: Console,
    dataset: Path | None = None,
    *,
    quick: bool = False,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Every figure for one model, on the dataset's documents (or the sample's). ``quick``:
    raw encode, the ceiling and e2e ingest with torch and the default backend only."""
    resumes, jobs = load_documents(dataset)
    texts = unique_texts(resumes, jobs)
    spec = ModelSpec.from_settings(settings.model, model_path)
    console.print(f"[bold]{spec.name}[/bold]: raw encode of {len(texts)} unique texts")
    raw = raw_encode(spec, texts)
    out: dict[str, Any] = {
        "model": version_of(spec.path),
        "device": spec.device,
        "documents": {
            "resumes": len(resumes),
            "jobs": len(jobs),
            "matches": len(resumes) * len(jobs),
            "source": str(dataset or "sample"),
        },
        "unique_texts": len(texts),
        "raw": raw,
    }

    def e2e(label: str, score: bool, count: int = 1, bulk: bool = False, **env: str) -> None:
        console.print(f"{spec.name}: end to end, {label}")
        with contextlib.ExitStack() as stack:
            stage = stack.enter_context(fresh_stage(settings, model_path, **env))
            stack.enter_context(workers(stage, console, count))
            seconds = submit_all(stage, resumes, jobs, score, bulk=bulk)
            if count == 1 and score:
                out["latency_one_resume_vs_all_jobs"] = {
                    "jobs": len(jobs),
                    "runs": LATENCY_RUNS,
                    "cold": latency(stage.app, resumes, cold=True),
                    "warm": latency(stage.app, resumes, cold=False),
                }
                out["worker_peak_rss_mib"] = peak_rss_mb(stage.pids)
        out[label] = {**_rate(len(texts), seconds), **versus(raw, seconds)}

    e2e("e2e_ingest", score=False, JOBFIT_MODEL__BACKEND="torch")
    # The default backend (auto: ONNX fp32 on a CPU where exact), next to torch's, same run.
    e2e("e2e_ingest_default_backend", score=False, JOBFIT_MODEL__BACKEND="auto")
    out["default_backend_vs_torch"] = round(
        out["e2e_ingest_default_backend"]["sentences_per_s"] / out["e2e_ingest"]["sentences_per_s"],
        3,
    )
    # The same in bulk messages (100 documents a message): the per-message work amortised.
    e2e("e2e_ingest_default_backend_bulk", score=False, bulk=True, JOBFIT_MODEL__BACKEND="auto")
    # What the default backend served: the fp32 check's verdict (which graph, what fused).
    out["default_backend_fp32_check"] = fp32_verdict(spec, settings.model.store)
    docs = len(resumes) + len(jobs)
    out["pipeline_ceiling"] = ceiling(settings, model_path, console, resumes, jobs)
    for label, rate in (
        ("e2e_ingest", "documents_per_s"),
        ("e2e_ingest_default_backend", "documents_per_s"),
        ("e2e_ingest_default_backend_bulk", "bulk_documents_per_s"),
    ):
        out["pipeline_ceiling"][f"vs_{label}"] = round(
            out["pipeline_ceiling"][rate] * out[label]["s"] / docs, 3
        )  # how much faster the pipeline alone is than with that backend
    if profile is not None:
        out["pipeline_ceiling"]["profile"] = profile_ceiling(
            settings, model_path, console, resumes, jobs, out=profile / f"ceiling-{spec.name}.prof"
        )
    if quick:
        return out
    e2e("e2e_ingest_score", score=True, JOBFIT_MODEL__BACKEND="torch")
    out["e2e_ingest_score"]["time_vs_packed_encode"] = round(
        out["e2e_ingest_score"]["s"] / raw["packed_encode"]["s"], 3
    )
    threads = max(1, (os.cpu_count() or 2) // 2)
    e2e(
        "e2e_ingest_2_workers",
        score=False,
        count=2,
        JOBFIT_MODEL__THREADS=str(threads),
        JOBFIT_MODEL__BACKEND="torch",
    )
    out["two_workers_vs_one"] = round(
        out["e2e_ingest_2_workers"]["sentences_per_s"] / out["e2e_ingest"]["sentences_per_s"], 3
    )
    out["e2e_ingest_2_workers"]["threads_per_worker"] = threads
    return out


def fp32_verdict(spec: ModelSpec, store: Path) -> dict[str, Any] | None:
    """The ONNX fp32 check's verdict for ``spec`` in ``store`` (None: none made)."""
    from jobfit.workers.embedders.export import export_dir
    from jobfit.workers.embedders.gate import FP32_CHECK_FILE

    path = export_dir(spec, store) / FP32_CHECK_FILE
    return dict(json.loads(path.read_text("utf-8"))) if path.is_file() else None


def drain(
    stage: Stage, send: Callable[[], list[AsyncResult]], documents: int = 0
) -> dict[str, float]:
    """What the stage's worker does with messages that were queued before it consumed any:
    its consumer is cancelled, ``send`` queues them, the consumer is added again; seconds
    from then until the last message's result (its ``date_done``: written after the rows are
    committed), so the producer's own speed and the wait's polling are not in the figure."""
    control = stage.app.control
    control.cancel_consumer(EMBED_QUEUE, destination=stage.hostnames, reply=True)
    t0 = time.perf_counter()
    results = send()
    sent_s = time.perf_counter() - t0
    documents = documents or len(results)
    cpu0 = cpu_seconds(stage.pids)
    start = datetime.now(UTC)
    control.add_consumer(EMBED_QUEUE, destination=stage.hostnames, reply=True)
    for r in results:
        r.get(timeout=600)
    cpu = cpu_seconds(stage.pids) - cpu0
    done = [r.date_done for r in results]
    end = max(d if d.tzinfo else d.replace(tzinfo=UTC) for d in done if d is not None)
    seconds = (end - start).total_seconds()
    return {
        "messages": len(results),
        "documents": documents,
        "s": round(seconds, 3),
        "messages_per_s": round(len(results) / seconds, 1),
        "documents_per_s": round(documents / seconds, 1),
        "producer_send_s": round(sent_s, 3),
        # The workers' CPU (user + system) per document, until the last result was read.
        "worker_cpu_ms_per_document": round(1000 * cpu / documents, 3),
    }


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def send_documents(
    stage: Stage, resumes: Docs, jobs: Docs, *, bulk: bool = False, score: bool = False
) -> Callable[[], list[AsyncResult]]:
    """Jobs then resumes, one per message or with ``bulk`` in bulk messages
    (``MAX_BULK_DOCUMENTS`` to a message)."""
    client = JobfitClient(app=stage.app)

    def send() -> list[AsyncResult]:
        if bulk:
            return client.submit_jobs(jobs, score=score) + client.submit_resumes(
                resumes, score=score
            )
        results = [client.submit_job(j, score=score) for j in jobs]
        return results + [client.submit_resume(r, score=score) for r in resumes]

    return send


def send_noops(stage: Stage, count: int) -> Callable[[], list[AsyncResult]]:
    """Celery's own no-op task (``celery.accumulate``: returns its arguments), ``count``
    times, to the embed queue: the round trip of a message with nothing in it."""

    def send() -> list[AsyncResult]:
        return [stage.app.send_task(NOOP_TASK, args=(i,), queue=EMBED_QUEUE) for i in range(count)]

    return send


def ceiling(
    settings: Settings,
    model_path: Path,
    console: Console,
    resumes: Docs,
    jobs: Docs,
    *,
    rounds: int = CEILING_ROUNDS,
) -> dict[str, Any]:
    """The pipeline's own ceiling: ingest (score=False) of the documents, queued beforehand,
    by one worker serving the instant backend (no model), on an empty database, one document
    per message and in bulk messages (``jobfit.ingest_resumes`` / ``ingest_jobs``); against
    Celery's own no-op round trip on the same worker, one message per document, just before.
    Each figure is the median of ``rounds`` rounds (the tables emptied between them): a run
    of 372 documents takes well under a second, and the machine's other work shows in it."""
    docs = len(resumes) + len(jobs)
    console.print(f"ceiling: {docs} documents, instant backend, {rounds} rounds")
    noops, runs, bulk = [], [], []
    with contextlib.ExitStack() as stack:
        stage = stack.enter_context(
            fresh_stage(settings, model_path, JOBFIT_MODEL__BACKEND="instant")
        )
        stack.enter_context(workers(stage, console, 1))
        for i in range(rounds):
            if i:
                empty_tables(stage.settings)
            noops.append(drain(stage, send_noops(stage, docs)))
            runs.append(drain(stage, send_documents(stage, resumes, jobs)))
            empty_tables(stage.settings)
            bulk.append(drain(stage, send_documents(stage, resumes, jobs, bulk=True), docs))
    run = statistics.median(r["documents_per_s"] for r in runs)
    in_bulk = statistics.median(r["documents_per_s"] for r in bulk)
    noop = statistics.median(r["messages_per_s"] for r in noops)
    return {
        "documents": docs,
        "documents_per_s": round(run, 1),
        "per_message_ms": round(1000 / run, 3),
        "bulk_documents_per_s": round(in_bulk, 1),
        "bulk_per_document_ms": round(1000 / in_bulk, 3),
        "bulk_documents_per_message": MAX_BULK_DOCUMENTS,
        "celery_noop_per_s": round(noop, 1),
        "vs_celery_noop": round(run / noop, 3),
        "bulk_vs_celery_noop": round(in_bulk / noop, 3),
        "rounds": {"ingest": runs, "bulk": bulk, "celery_noop": noops},
    }


def empty_tables(settings: Settings) -> None:
    """What an ingest wrote (documents, their embeddings, the delivery counts): gone."""
    engine = create_engine(make_url(settings.db.url))
    try:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE documents, field_embeddings, deliveries CASCADE"))
    finally:
        engine.dispose()


def profile_ceiling(
    settings: Settings,
    model_path: Path,
    console: Console,
    resumes: Docs,
    jobs: Docs,
    *,
    out: Path,
) -> dict[str, Any]:
    """The ceiling's run again, its worker under ``tools.profiler`` (slower: the profiler's
    own cost is in these figures); ms per message of each stage of the ingest path."""
    from tools.profiler import per_message

    out.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"ceiling, profiled: {out}")
    with contextlib.ExitStack() as stack:
        stage = stack.enter_context(
            fresh_stage(settings, model_path, JOBFIT_MODEL__BACKEND="instant")
        )
        stack.enter_context(
            workers(stage, console, 1, launcher=("-m", "tools.profiler", str(out), "--"))
        )
        run = drain(stage, send_documents(stage, resumes, jobs))
    return {"file": str(out), "run": run, "stages": per_message(out, int(run["messages"]))}


def goals(models: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's goals 1 and 2, read off the figures (each model's)."""
    out: dict[str, Any] = {}
    for name, m in models.items():
        ceiling_ = m["pipeline_ceiling"]
        best = max(ceiling_["documents_per_s"], ceiling_["bulk_documents_per_s"])
        out[f"1_pipeline_ceiling_{name}"] = {
            "documents_per_s": best,
            "one_document_per_message": ceiling_["documents_per_s"],
            "bulk_messages": ceiling_["bulk_documents_per_s"],
            "target": ">= 1000",
            "met": best >= 1000,
        }
        single = m["e2e_ingest_default_backend"]["throughput_vs_st_encode"]
        bulk = m["e2e_ingest_default_backend_bulk"]["throughput_vs_st_encode"]
        out[f"2_default_backend_e2e_vs_st_encode_{name}"] = {
            "ratio": max(single, bulk),
            "one_document_per_message": single,
            "bulk_messages": bulk,
            "target": ">= 1.5",
            "met": max(single, bulk) >= 1.5,
        }
    mpnet = models.get("mpnet")
    if mpnet is not None and "e2e_ingest_score" in mpnet:
        out["dataset_mpnet_ingest_score_time_vs_packed_encode"] = mpnet["e2e_ingest_score"][
            "time_vs_packed_encode"
        ]
    return out


def int8_goals(backends: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's goal 3, read off each model's gate ladder (``judge_ladder``): the scheme
    that serves, its speed against torch fp32 on the check set, and every scheme tried."""
    out: dict[str, Any] = {}
    for name, verdict in backends.items():
        passes = bool(verdict["gate"]["int8_passes"])
        speedup = verdict.get("onnx-int8", {}).get("speedup_vs_torch")  # none: none was made
        out[f"3_int8_served_vs_torch_{name}"] = {
            "served": verdict["quantization"].get("scheme") if passes else None,
            "speedup_vs_torch": speedup if passes else None,
            "tried": {
                t["quantization"].get("scheme"): {
                    k: t[k]
                    for k in (
                        "passes",
                        "speedup_vs_torch",
                        "spearman_drop",
                        "cosine_to_torch_mean",
                        "error",
                    )
                    if k in t
                }
                for t in verdict["tried"]
            },
            "target": "served at >= 2x torch fp32",
            "met": passes and speedup is not None and speedup >= 2.0,
        }
    return out


def cpu_model() -> dict[str, Any]:
    """The CPU's name and the vector extensions that decide int8 speed and accuracy
    (onnxruntime's u8s8 kernels can saturate on x86 without VNNI)."""
    info: dict[str, Any] = {"name": None, "flags": []}
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["name"] is None:
                info["name"] = value.strip()
            elif key.strip() == "flags":
                wanted = ("avx", "vnni", "amx")
                info["flags"] = sorted(f for f in value.split() if f.startswith(wanted))
                break
    return info


def bench(
    settings: Settings,
    models: dict[str, Path],
    console: Console,
    dataset: Path | None = None,
    *,
    quick: bool = False,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Every figure for each model on the dataset's documents (or the sample), then the
    backends on the check set (not in a ``quick`` run). ``profile``: a folder for the
    profile of a ceiling run (``tools.profiler``)."""
    import torch

    from jobfit.workers.embedders.export import cpu_features

    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            # The flags that decide how int8 is quantised (workers.embedders.export).
            "features": cpu_features(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "batch": settings.batch.model_dump(),
        "quick": quick,
        "models": {
            name: bench_model(settings, path, console, dataset, quick=quick, profile=profile)
            for name, path in models.items()
        },
    }
    result["goals"] = goals(result["models"])
    if quick:
        return result
    from jobfit.workers.embedders.export import quantization_ladder
    from jobfit.workers.embedders.gate import judge_ladder

    result["backends"] = {}
    for name, path in models.items():
        console.print(f"[bold]{name}[/bold]: backends on the check set")
        spec = ModelSpec.from_settings(settings.model, path)
        # What the gate does on this CPU (every scheme until one passes), judged afresh.
        result["backends"][name] = judge_ladder(
            spec, settings.model.store, quantization_ladder(cpu_features())
        )
    result["goals"].update(int8_goals(result["backends"]))
    return result
