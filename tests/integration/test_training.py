"""Retrain -> evaluate -> promote -> a running embed worker switches, on real services.

Its own database, Redis key prefix, model store and two worker processes (``--queues embed``
and ``--queues train``), so promotions here never reach the other tests' worker."""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.client import JobfitClient, read_documents
from jobfit.shared.config import PairType, Settings
from jobfit.shared.fields import field_texts
from jobfit.shared.orm import DocumentRow, MatchRow, ModelVersionRow
from jobfit.shared.schemas import ResumeDocument
from jobfit.shared.splits import split_part
from tests.conftest import (
    make_settings,
    private_database,
    producer_app,
    session_factory_for,
)
from tools.procs import RUN_ID, WorkerProcess

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "sample"
TIMEOUT = 300
# Fast, small runs: the registry is polled every half second, heads train a few epochs.
WORKER_ENV = {"JOBFIT_MODEL__RELOAD_INTERVAL_S": "0.5", "JOBFIT_TRAIN__DEVICE": "cpu"}


def pick_resumes() -> tuple[list[dict], dict]:
    """8 training-side and 3 evaluation-side resumes of the bundled sample, and one more
    resume kept back to submit after the promotion."""
    resumes = read_documents(SAMPLE / "resumes.jsonl")
    train = [r for r in resumes if split_part("resume", r["id"]) == "train"]
    held = [r for r in resumes if split_part("resume", r["id"]) == "eval"]
    assert len(train) >= 9 and len(held) >= 3
    return train[:8] + held[:3], train[8]


@pytest.fixture(scope="module")
def tsettings(minilm_path: Path, tmp_path_factory) -> Iterator[Settings]:
    for url in private_database("_train"):
        yield make_settings(
            url, f"jobfit-test-{RUN_ID}-train:", minilm_path, tmp_path_factory.mktemp("store")
        )


@pytest.fixture(scope="module")
def tfactory(tsettings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from session_factory_for(tsettings)


@pytest.fixture(scope="module")
def tapp(tsettings: Settings):
    return producer_app(tsettings)


@pytest.fixture(scope="module")
def workers(tsettings, tapp, tmp_path_factory) -> Iterator[dict[str, WorkerProcess]]:
    logs = tmp_path_factory.mktemp("train-logs")
    procs = {
        "embed": WorkerProcess(tsettings, tapp, "t-embed", logs / "embed.log", env=WORKER_ENV),
        "train": WorkerProcess(
            tsettings, tapp, "t-train", logs / "train.log", queues="train", env=WORKER_ENV
        ),
    }
    for p in procs.values():
        p.start()
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
def tclient(tapp) -> JobfitClient:
    return JobfitClient(app=tapp)


@pytest.fixture(scope="module")
def labelled(workers, tclient, tfactory) -> dict:
    """Sample documents ingested through the embed worker, their labels sent with
    ``submit_label`` through the train worker."""
    resumes, spare = pick_resumes()
    jobs = read_documents(SAMPLE / "jobs.jsonl")[:6]
    results = [tclient.submit_job(j) for j in jobs] + [tclient.submit_resume(r) for r in resumes]
    for r in results:
        assert r.get(timeout=TIMEOUT)["status"] in {"created", "unchanged"}
    ids = {r["id"] for r in resumes}, {j["id"] for j in jobs}
    with (SAMPLE / "labels.csv").open() as fh:
        labels = [
            (row["resume_id"], row["job_id"], float(row["matched_score"]))
            for row in csv.DictReader(fh)
            if row["resume_id"] in ids[0] and row["job_id"] in ids[1]
        ]
    sent = [tclient.submit_label(r, j, y, source="test") for r, j, y in labels]
    assert all(s.get(timeout=TIMEOUT)["status"] == "stored" for s in sent)
    with tfactory() as s:
        assert repo.label_count(session=s) == len(labels) == len(resumes) * len(jobs)
        base = s.execute(
            select(ModelVersionRow.version).where(ModelVersionRow.status == repo.ModelStatus.ACTIVE)
        ).scalar_one()
    return {"resumes": resumes, "spare": spare, "jobs": jobs, "labels": labels, "base": base}


def active_version(factory) -> str:
    with factory() as s:
        return s.execute(
            select(ModelVersionRow.version).where(ModelVersionRow.status == repo.ModelStatus.ACTIVE)
        ).scalar_one()


def versions_of_matches(factory, resume_id: str) -> set[str]:
    r = aliased(DocumentRow)
    with factory() as s:
        rows = s.execute(
            select(ModelVersionRow.version)
            .join(MatchRow, MatchRow.model_version_id == ModelVersionRow.id)
            .join(r, MatchRow.resume_id == r.id)
            .where(r.external_id == resume_id)
        ).scalars()
        return set(rows)


def count_matches(factory, version: str) -> int:
    with factory() as s:
        return s.execute(
            select(func.count())
            .select_from(MatchRow)
            .join(ModelVersionRow, MatchRow.model_version_id == ModelVersionRow.id)
            .where(ModelVersionRow.version == version)
        ).scalar_one()


def test_retrain_promotes_and_the_running_worker_switches(
    labelled, workers, tclient, tfactory, tsettings
):
    base = labelled["base"]
    embed_pid = workers["embed"].proc.pid
    states: list[str] = []
    result = tclient.retrain(mode="head", head_epochs=40, promote_margin=-1.0, regress_margin=2.0)
    deadline = time.monotonic() + TIMEOUT
    while not result.ready() and time.monotonic() < deadline:
        states.append(result.state)
        time.sleep(0.2)
    out = result.get(timeout=5)
    assert "PROGRESS" in states  # progress is visible as task state (Flower, --wait)
    assert out["status"] == "promoted", out
    new = out["version"]
    assert new != base and out["parent_version"] == base
    # The labels sent with submit_label whose resume and job are both on the training side.
    n_train = sum(
        1
        for r, j, _ in labelled["labels"]
        if split_part("resume", r) == "train" and split_part("job", j) == "train"
    )
    assert out["train_matches"] == n_train
    held_jobs = [j for j in labelled["jobs"] if split_part("job", j["id"]) == "eval"]
    assert held_jobs  # the sample's first jobs include a held-out one

    with tfactory() as s:
        row = repo.get_version(session=s, version=new)
        assert row.status == repo.ModelStatus.ACTIVE and row.parent_version == base
        assert Path(row.path).is_dir() and row.params["data_hash"]
        assert row.params["promotion"]["promoted"] is True
        weights = row.params["pair_weights"]
        assert set(weights) == {p.value for p in PairType}
        keys = {k.split(":")[0]: k for k in row.metrics}
        assert set(keys) == {"resume", "job"}  # judged on held-out resumes and held-out jobs
        assert row.metrics[keys["resume"]]["eval_matches"] == 3 * 6
        assert row.metrics[keys["job"]]["eval_matches"] == len(held_jobs) * len(labelled["resumes"])
        assert repo.get_version(session=s, version=base).metrics[keys["job"]]  # judged too
    assert not list(tsettings.model.store.glob(".tmp-*"))

    # The same worker process, not restarted, now scores with the new version.
    spare = labelled["spare"]
    ingest = tclient.submit_resume(spare).get(timeout=TIMEOUT)
    assert ingest["model_version"] == new
    assert versions_of_matches(tfactory, spare["id"]) == {new}
    assert workers["embed"].proc.pid == embed_pid and workers["embed"].alive()

    # The promotion queued a rescore: every stored (resume, job) gets a row of the new version.
    n_pairs = (len(labelled["resumes"]) + 1) * len(labelled["jobs"])
    deadline = time.monotonic() + TIMEOUT
    while count_matches(tfactory, new) < n_pairs and time.monotonic() < deadline:
        time.sleep(0.5)
    assert count_matches(tfactory, new) == n_pairs

    # And those scores are the trained model's: cosines of its own embeddings.
    from sentence_transformers import SentenceTransformer

    from jobfit.shared.fields import usable_pairs
    from jobfit.shared.orm import PairScoreRow
    from jobfit.shared.schemas import JobDocument

    model = SentenceTransformer(row.path, device="cpu", local_files_only=True)
    job = labelled["jobs"][0]
    rt = field_texts(ResumeDocument.model_validate(spare))
    jt = field_texts(JobDocument.model_validate(job))
    r, j = aliased(DocumentRow), aliased(DocumentRow)
    with tfactory() as s:
        served, match_id = s.execute(
            select(MatchRow.score, MatchRow.id)
            .join(ModelVersionRow, MatchRow.model_version_id == ModelVersionRow.id)
            .join(r, MatchRow.resume_id == r.id)
            .join(j, MatchRow.job_id == j.id)
            .where(
                ModelVersionRow.version == new,
                r.external_id == spare["id"],
                j.external_id == job["id"],
            )
        ).one()
        stored = dict(
            s.execute(
                select(PairScoreRow.pair_type, PairScoreRow.score).where(
                    PairScoreRow.match_id == match_id
                )
            ).all()
        )
    pairs = usable_pairs(rt, jt)
    assert set(stored) == {p.value for p in pairs}
    direct = {}
    for p in pairs:
        a, b = model.encode([rt[p], jt[p]], normalize_embeddings=True)
        direct[p.value] = float(a @ b)
        assert stored[p.value] == pytest.approx(direct[p.value], abs=1e-4)
    # The served match score is the weighted mean with the version's stored (learned) weights.
    expected = sum(weights[p] * c for p, c in direct.items()) / sum(weights[p] for p in direct)
    assert served == pytest.approx(expected, abs=1e-4)


def test_a_candidate_that_does_not_beat_the_active_is_not_promoted(labelled, tclient, tfactory):
    before = active_version(tfactory)
    out = tclient.retrain(mode="head", head_epochs=5, promote_margin=1.0).get(timeout=TIMEOUT)
    assert out["status"] == "candidate" and "does not beat" in out["reason"]
    assert active_version(tfactory) == before
    with tfactory() as s:
        row = repo.get_version(session=s, version=out["version"])
        assert row.status == repo.ModelStatus.CANDIDATE
        assert "held-out resumes" in row.params["promotion"]["refused_by"]


def test_a_candidate_better_on_resumes_but_worse_on_jobs_stays_a_candidate(
    labelled, tsettings, tfactory, monkeypatch
):
    """The real retrain path, in process, against the real registry; the evaluations are
    fixed so that the candidate wins on held-out resumes and loses on held-out jobs."""
    from jobfit.shared.schemas import RetrainRequest
    from jobfit.workers.training import promotion

    before = active_version(tfactory)
    figures = {"resume": (0.9, 0.5), "job": (0.2, 0.5)}  # (candidate, active)

    def fixed(*, version, split, model=None, **_):
        return {"match_spearman": figures[split][0 if version != before else 1]}

    monkeypatch.setattr(promotion, "evaluate_version", fixed)
    request = RetrainRequest(mode="head", head_epochs=3)
    out = promotion.retrain(
        settings=tsettings, factory=tfactory, request=request, progress=lambda *a, **k: None
    )
    assert out["status"] == "candidate" and out["refused_by"] == ["held-out jobs"]
    assert active_version(tfactory) == before
    with tfactory() as s:
        row = repo.get_version(session=s, version=out["version"])
        assert row.status == repo.ModelStatus.CANDIDATE
        decision = row.params["promotion"]
    assert decision["promoted"] is False and decision["refused_by"] == ["held-out jobs"]
    assert "held-out jobs: match_spearman 0.2000 is worse than active 0.5000" in decision["reason"]


def test_killed_retrain_leaves_the_active_model_untouched(
    labelled, workers, tclient, tfactory, tsettings
):
    before = active_version(tfactory)
    with tfactory() as s:
        n_versions = len(repo.list_versions(session=s))
    dirs = {p.name for p in tsettings.model.store.iterdir()}
    # A full fine-tune on CPU: seconds per step, so it is surely running when killed.
    result = tclient.retrain(mode="full", max_steps=500)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        info = result.info if result.state == "PROGRESS" else None
        if isinstance(info, dict) and info.get("stage") == "fine-tuning":
            break
        time.sleep(0.2)
    else:
        pytest.fail("retrain never reported fine-tuning progress")
    workers["train"].kill()
    assert active_version(tfactory) == before
    with tfactory() as s:
        assert len(repo.list_versions(session=s)) == n_versions
    left = {p.name for p in tsettings.model.store.iterdir()} - dirs
    assert all(name.startswith(".tmp-") for name in left)  # no half-written model in place
    # The embed side never noticed: it still serves the active version.
    assert workers["embed"].alive()
    workers["train"].start()


def test_a_model_that_fails_to_load_keeps_the_old_one_serving(
    labelled, workers, tclient, tfactory, tsettings
):
    good = active_version(tfactory)
    with tfactory() as s:
        src = Path(repo.get_version(session=s, version=good).path)
    broken = tsettings.model.store / "broken-model"
    shutil.copytree(src, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with tfactory.begin() as s:
        repo.insert_model_version(
            session=s,
            model=repo.ModelInfo("broken@000000000000", "broken-model", str(broken), 384),
            status=repo.ModelStatus.CANDIDATE,
            parent_version=good,
            params={},
        )
        repo.promote(session=s, version="broken@000000000000")
    time.sleep(1.0)  # past the reload interval
    out = tclient.request_matches(labelled["spare"]["id"]).get(timeout=TIMEOUT)
    assert out["status"] == "ok" and out["model_version"] == good
    assert workers["embed"].alive()
    with tfactory() as s:
        err = repo.get_version(session=s, version="broken@000000000000").last_error
    assert err
    with tfactory.begin() as s:
        repo.promote(session=s, version=good)  # roll back


def test_pair_file_examples_join_the_training_set(tsettings, tfactory, tmp_path):
    import os
    import subprocess
    import sys

    from jobfit.workers.training.data import load_training_data
    from tools.procs import ROOT, settings_env

    f = tmp_path / "pairs.csv"
    f.write_text(
        "sentence_0,sentence_1,label\n"
        '"Skills: Python, SQL",Skills required: SQL,0.9\n'
        "Positions: Cook,Job title: Data Engineer,0.05\n"
    )
    cmd = [sys.executable, "-m", "jobfit", "data", "import-pairs", str(f)]
    env = {**os.environ, **settings_env(tsettings)}
    for _ in range(2):  # idempotent: a second import changes nothing
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120)
    with tfactory() as s:
        extra = load_training_data(session=s).extra_pairs
    assert sorted(extra) == [
        ("Positions: Cook", "Job title: Data Engineer", 0.05),
        ("Skills: Python, SQL", "Skills required: SQL", 0.9),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence_0,sentence_1,label\nx,y,3\n")
    out = subprocess.run(
        [*cmd[:-1], str(bad)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "not in [-1, 1]" in out.stderr
