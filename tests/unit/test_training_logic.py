"""Pure training logic: pair labels, splits, metrics, the promotion rule (read from the
evaluator's declared primary metric and direction), atomic saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobfit.shared.config import PairType
from jobfit.shared.splits import EVAL_FRACTION, split_part
from jobfit.workers.training.data import (
    MatchExample,
    TrainingData,
    match_examples,
    pair_examples,
    rank_targets,
    read_pair_file,
    split_both,
    split_examples,
)
from jobfit.workers.training.evaluation import (
    MatchEvaluator,
    metrics_from_vectors,
    metrics_key,
    score_examples,
)
from jobfit.workers.training.promotion import judge_candidate, should_promote
from jobfit.workers.training.trainers import base_name, save_atomically, sweep_tmp

S, P = PairType.SKILLS, PairType.POSITIONS


def m(rid: str, jid: str, y: float, pairs) -> MatchExample:
    return MatchExample(rid, jid, y, tuple(pairs))


def test_each_field_pair_carries_its_match_label_and_duplicates_take_the_mean():
    matches = [
        m(
            "r1",
            "j1",
            0.8,
            [(S, "Skills: a", "Skills required: x"), (P, "Positions: p", "Job title: t")],
        ),
        m(
            "r2",
            "j1",
            0.4,
            [(S, "Skills: b", "Skills required: x"), (P, "Positions: p", "Job title: t")],
        ),
    ]
    pairs = pair_examples(matches, extra=[("u", "v", 1.0)])
    assert pairs == sorted(
        [
            ("Skills: a", "Skills required: x", 0.8),
            ("Skills: b", "Skills required: x", 0.4),
            ("Positions: p", "Job title: t", pytest.approx(0.6)),
            ("u", "v", 1.0),
        ]
    )


def test_match_examples_use_only_pairs_both_sides_have_and_count_pending_labels():
    rt = {"r1": {S: "Skills: a"}, "r2": {P: "Positions: p"}}
    jt = {"j1": {S: "Skills required: x", P: "Job title: t"}}
    out, pending = match_examples([("r1", "j1", 0.5), ("r2", "j1", 0.7), ("r9", "j1", 0.1)], rt, jt)
    assert pending == 1
    assert [(e.resume_id, [p for p, _, _ in e.pairs]) for e in out] == [("r1", [S]), ("r2", [P])]


def test_split_is_deterministic_by_id_and_near_the_fraction():
    ids = [f"resume-{i}" for i in range(2000)]
    parts = [split_part("resume", i) for i in ids]
    assert parts == [split_part("resume", i) for i in ids]
    share = parts.count("eval") / len(parts)
    assert abs(share - EVAL_FRACTION) < 0.03
    # The job split is an independent assignment.
    assert parts != [split_part("job", i) for i in ids]


def test_split_examples_keeps_every_match_of_a_resume_on_one_side():
    matches = [m(f"r{i % 7}", f"j{i % 3}", 0.5, [(S, "a", "b")]) for i in range(21)]
    parts = {f"r{i}": ("eval" if i < 2 else "train") for i in range(7)}
    train, held = split_examples(matches, parts, "resume")
    assert {x.resume_id for x in held} == {"r0", "r1"}
    assert not {x.resume_id for x in train} & {"r0", "r1"}


def test_metrics_perfect_ranking_and_ndcg():
    vec = {
        "a": np.array([1.0, 0.0]),
        "b1": np.array([1.0, 0.0]),
        "b2": np.array([0.6, 0.8]),
        "b3": np.array([0.0, 1.0]),
    }
    matches = [
        m("r1", "j1", 0.9, [(S, "a", "b1")]),
        m("r1", "j2", 0.5, [(S, "a", "b2")]),
        m("r1", "j3", 0.1, [(S, "a", "b3")]),
    ]
    out = metrics_from_vectors(vec, matches)
    assert out["match_spearman"] == pytest.approx(1.0)
    assert out["pair_spearman"] == pytest.approx(1.0)
    assert out["ndcg_at_10"] == pytest.approx(1.0)
    reversed_ = [m(x.resume_id, x.job_id, 1 - x.label, x.pairs) for x in matches]
    assert metrics_from_vectors(vec, reversed_)["match_spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("cand", "active", "margin", "promote"),
    [
        (0.70, 0.60, 0.005, True),
        (0.603, 0.60, 0.005, False),
        (0.50, 0.60, 0.005, False),
        (0.50, None, 0.005, True),
        (float("nan"), 0.1, 0.0, False),
        (0.30, float("nan"), 0.0, True),
        (0.60, 0.60, -1.0, True),
    ],
)
def test_promotion_rule(cand, active, margin, promote):
    metric = MatchEvaluator.primary_metric
    ok, reason = should_promote(
        {metric: cand},
        None if active is None else {metric: active},
        margin,
        metric=metric,
        greater_is_better=MatchEvaluator.greater_is_better,
    )
    assert ok is promote and reason


def test_the_evaluator_declares_what_promotion_reads():
    assert MatchEvaluator.primary_metric == "match_spearman"
    assert MatchEvaluator.greater_is_better is True


@pytest.mark.parametrize(
    ("cand", "active", "promote"), [(0.40, 0.50, True), (0.49, 0.50, False), (0.60, 0.50, False)]
)
def test_promotion_follows_a_lower_is_better_declaration(cand, active, promote):
    ok, reason = should_promote(
        {"loss": cand}, {"loss": active}, 0.05, metric="loss", greater_is_better=False
    )
    assert ok is promote and "loss" in reason


def test_data_hash_changes_with_labels_and_eval_hash_ignores_training_side():
    held = {"resume": [m("r2", "j1", 0.2, [(S, "c", "b")])], "job": []}
    a = TrainingData(train=[m("r1", "j1", 0.5, [(S, "a", "b")])], held_out=held)
    b = TrainingData(train=[m("r1", "j1", 0.6, [(S, "a", "b")])], held_out=held)
    assert a.data_hash() != b.data_hash()
    assert a.eval_hash("resume") == b.eval_hash("resume") != a.eval_hash("job")
    assert metrics_key("resume", a.eval_hash("resume")).startswith("resume:")


def test_training_keeps_only_matches_whose_resume_and_job_were_both_unseen_in_evaluation():
    matches = [m(f"r{i}", f"j{k}", 0.5, [(S, "a", "b")]) for i in range(3) for k in range(3)]
    parts = {"resume": {"r0": "eval"}, "job": {"j0": "eval"}}
    train, held = split_both(matches, parts)
    assert {(x.resume_id, x.job_id) for x in train} == {
        (f"r{i}", f"j{k}") for i in (1, 2) for k in (1, 2)
    }
    assert {x.job_id for x in held["resume"]} == {"j0", "j1", "j2"}  # every job of r0
    assert {x.resume_id for x in held["job"]} == {"r0", "r1", "r2"}  # every resume of j0


def test_match_scores_are_weighted_means_of_pair_cosines():
    vec = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([1.0, 0.0])}
    match = m("r1", "j1", 0.5, [(S, "a", "c"), (P, "a", "b")])  # cosines 1 and 0
    _, _, equal, _ = score_examples(vec, [match])
    _, _, weighted, _ = score_examples(vec, [match], {S: 3.0, P: 1.0})
    assert equal[0] == pytest.approx(0.5) and weighted[0] == pytest.approx(0.75)
    # The training objective computes the same score from the same weights.
    torch = pytest.importorskip("torch")
    from jobfit.workers.training.match_loss import MatchTensors

    index = {t: i for i, t in enumerate(vec)}
    z = torch.tensor(np.stack(list(vec.values())), dtype=torch.float32)
    log_w = torch.log(torch.tensor([3.0 if p == S else 1.0 for p in PairType]))
    scores = MatchTensors.build([match], index).scores(z, log_w)
    assert float(scores[0]) == pytest.approx(0.75)


def test_pair_cosines_from_the_grid_equal_the_rows_dot_products():
    """The head's pair cosines come from one product of the distinct resume rows with the
    distinct job rows; each is the dot product of its two rows, and the grid is skipped
    where it would be much larger than the pairs."""
    torch = pytest.importorskip("torch")
    from jobfit.workers.training import match_loss
    from jobfit.workers.training.match_loss import MatchTensors, pair_grid

    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(9, 4, generator=gen), dim=-1)
    texts = [f"t{i}" for i in range(9)]
    index = {t: i for i, t in enumerate(texts)}
    matches = [
        m(f"r{r}", f"j{j}", 0.1 * r, [(S, texts[r], texts[6 + j]), (P, texts[3 + r], texts[6])])
        for r in range(3)
        for j in range(3)
    ]
    t = MatchTensors.build(matches, index)
    assert t.grid is not None
    rows = (z[t.a] * z[t.b]).sum(-1)
    assert torch.allclose(t.cosines(z), rows, atol=1e-6)
    log_w = torch.tensor([0.3 * i for i in range(len(PairType))])
    by_rows = match_loss.weighted_match_scores(rows, t.kind, t.match, len(matches), log_w)
    assert torch.allclose(t.scores(z, log_w), by_rows, atol=1e-6)
    # Two pairs of four distinct texts: a 2 x 2 grid is 2 cells a pair, allowed; with a
    # bound of 1 cell a pair, the rows' dot products are used instead.
    a, b = torch.tensor([0, 1]), torch.tensor([2, 3])
    assert pair_grid(a, b) is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(match_loss, "GRID_CELLS_PER_PAIR", 1)
        assert pair_grid(a, b) is None
        ungridded = MatchTensors.build([matches[0], matches[4]], index)  # 8 cells, 4 pairs
    assert ungridded.grid is None
    assert torch.allclose(ungridded.cosines(z), (z[ungridded.a] * z[ungridded.b]).sum(-1))


def test_the_head_optimiser_gives_the_pair_weights_their_own_rate_and_no_decay():
    torch = pytest.importorskip("torch")
    from jobfit.workers.training.trainers import TrainParams, head_optimizer

    head = torch.nn.Linear(4, 4)
    log_w = torch.zeros(len(PairType), requires_grad=True)
    params = TrainParams(head_learning_rate=1e-3, head_weights_learning_rate=3e-2)
    body, weights = head_optimizer(head, log_w, params).param_groups
    assert body["lr"] == 1e-3 and body["weight_decay"] == params.head_weight_decay
    assert weights["params"] == [log_w]
    assert weights["lr"] == 3e-2 and weights["weight_decay"] == 0.0
    fixed = head_optimizer(head, log_w, TrainParams(learn_weights=False)).param_groups
    assert len(fixed) == 1


def test_a_candidate_better_on_resumes_but_worse_on_jobs_is_refused_by_the_job_check():
    rule = {
        "primary": "resume",
        "margin": 0.005,
        "regress_margin": 0.01,
        "metric": MatchEvaluator.primary_metric,
        "greater_is_better": MatchEvaluator.greater_is_better,
    }
    metric = MatchEvaluator.primary_metric
    active = {"resume": {metric: 0.60}, "job": {metric: 0.50}}
    worse_on_jobs = judge_candidate(
        {"resume": {metric: 0.75}, "job": {metric: 0.45}}, active, **rule
    )
    assert not worse_on_jobs.promoted and worse_on_jobs.refused_by == ("held-out jobs",)
    assert "held-out jobs" in worse_on_jobs.reason
    within = judge_candidate({"resume": {metric: 0.75}, "job": {metric: 0.495}}, active, **rule)
    assert within.promoted and within.refused_by == ()
    no_gain = judge_candidate({"resume": {metric: 0.60}, "job": {metric: 0.40}}, active, **rule)
    assert no_gain.refused_by == ("held-out resumes", "held-out jobs")
    assert judge_candidate({"resume": {metric: 0.3}, "job": {metric: 0.1}}, None, **rule).promoted


def test_rank_targets_keep_the_order_and_spread_it_over_the_label_range():
    """Each label becomes its rank (ties share their mean rank) on the labels' own scale:
    (rank - 0.5) / n of the way from the lowest label to the highest; ids and pairs stay."""
    labels = [0.35, 0.1, 0.85, 0.35, 0.8]
    matches = [
        m(f"r{i}", "j", y, [(S, f"Skills: {i}", "Skills required: x")])
        for i, y in enumerate(labels)
    ]
    ranked = rank_targets(matches)
    # ranks 2.5, 1, 5, 2.5, 4 of 5 -> shares 0.4, 0.1, 0.9, 0.4, 0.7 of 0.1..0.85
    assert [t.label for t in ranked] == pytest.approx([0.4, 0.175, 0.775, 0.4, 0.625])
    assert [(t.resume_id, t.pairs) for t in ranked] == [(x.resume_id, x.pairs) for x in matches]
    assert rank_targets([]) == []
    noisy = [m("a", "j", 0.1 + 0.2, []), m("b", "j", 0.3, []), m("c", "j", 0.9, [])]
    # ranks 1.5, 1.5, 3 of 3 -> shares 1/3, 1/3, 5/6 of 0.3..0.9
    assert [t.label for t in rank_targets(noisy)] == pytest.approx([0.5, 0.5, 0.8])
    assert [t.label for t in rank_targets([m("a", "j", 0.5, [])] * 2)] == [0.5, 0.5]


def test_training_hands_the_trainers_rank_targets_by_default_and_labels_when_asked(
    monkeypatch, tmp_path: Path
):
    from jobfit.workers.training import trainers

    seen: list[list[float]] = []

    def spy(model, matches, params, **_):
        seen.append([x.label for x in matches])
        return trainers.TrainResult(model, {}, {})

    monkeypatch.setattr(trainers, "train_head", spy)
    monkeypatch.setattr(trainers, "train_full", spy)
    matches = _tiny_matches()
    result = trainers.train(None, matches, trainers.TrainParams(), work_dir=tmp_path)
    full = trainers.TrainParams(mode="full", target="label")
    assert trainers.train(None, matches, full, work_dir=tmp_path).info["target"] == "label"
    assert seen == [[x.label for x in rank_targets(matches)], [x.label for x in matches]]
    assert result.info["target"] == "rank"
    with pytest.raises(ValueError, match="target"):
        trainers.TrainParams(target="score")  # type: ignore[arg-type]


def test_read_pair_file_csv_jsonl_and_errors(tmp_path: Path):
    f = tmp_path / "p.csv"
    f.write_text('sentence_0,sentence_1,label\n"Skills: a, b",Skills required: b,0.7\n')
    assert read_pair_file(f) == [("Skills: a, b", "Skills required: b", 0.7)]
    j = tmp_path / "p.jsonl"
    j.write_text('{"sentence_0": "x", "sentence_1": "y", "label": 0.1}\n')
    assert read_pair_file(j) == [("x", "y", 0.1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence_0,sentence_1,label\nx,y,7\n")
    with pytest.raises(ValueError, match="not in"):
        read_pair_file(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_pair_file(missing)


def test_base_name_strips_the_fine_tune_suffix():
    assert base_name("all-MiniLM-L6-v2-ft-20261127-081500-ab12cd") == "all-MiniLM-L6-v2"
    assert base_name("all-mpnet-base-v2") == "all-mpnet-base-v2"


class _FailingModel:
    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "partial").write_text("x")
        raise OSError("disk full")


def test_a_failed_save_leaves_nothing_in_the_store(tmp_path: Path):
    with pytest.raises(OSError, match="disk full"):
        save_atomically(_FailingModel(), tmp_path, "m-ft")
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_only_old_temporary_dirs(tmp_path: Path):
    old, new, keep = tmp_path / ".tmp-old", tmp_path / ".tmp-new", tmp_path / "model"
    for d in (old, new, keep):
        d.mkdir()
    import os

    os.utime(old, (1, 1))
    assert sweep_tmp(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-new", "model"]


def _tiny_matches() -> list[MatchExample]:
    resumes = {"r1": "Skills: Python, SQL", "r2": "Skills: Cooking, Baking"}
    jobs = {"j1": "Skills required: Python", "j2": "Skills required: Pastry"}
    titles = {"r1": "Positions: Data Analyst", "r2": "Positions: Chef"}
    job_titles = {"j1": "Job title: Data Engineer", "j2": "Job title: Pastry Chef"}
    fit = {("r1", "j1"): 0.9, ("r2", "j2"): 0.8, ("r1", "j2"): 0.1, ("r2", "j1"): 0.05}
    return [
        m(r, j, y, [(S, resumes[r], jobs[j]), (P, titles[r], job_titles[j])])
        for (r, j), y in fit.items()
    ]


@pytest.mark.parametrize("mode", ["head", "full"])
def test_both_modes_train_the_match_score_and_return_its_weights(minilm_path, tmp_path, mode):
    """A few steps of each mode on real MiniLM: the model comes back usable, with a weight
    per pair type (what the registry stores with the version)."""
    from jobfit.workers.training.encoding import load_model
    from jobfit.workers.training.trainers import TrainParams, train

    params = TrainParams(mode=mode, max_steps=2, matches_per_step=2, head_epochs=5)
    result = train(load_model(minilm_path, "cpu"), _tiny_matches(), params, work_dir=tmp_path)
    assert set(result.pair_weights) == {p.value for p in PairType}
    assert np.mean(list(result.pair_weights.values())) == pytest.approx(1.0, abs=1e-3)
    vecs = result.model.encode(["Skills: Python"], normalize_embeddings=True)
    assert vecs.shape == (1, 384) and np.isfinite(vecs).all()


def test_the_head_trains_its_full_steps_unless_early_stopping_is_asked_for(minilm_path):
    """By default the head takes ``head_epochs`` steps on every training match (no
    validation slice); with ``head_val_fraction`` a slice of unseen resumes and jobs picks
    the step count first, at most ``head_epochs``, and training reports its figure."""
    from jobfit.workers.training.encoding import load_model
    from jobfit.workers.training.trainers import TrainParams, train_head

    rng = np.random.default_rng(0)
    resumes = [f"Skills: r{i}" for i in range(40)]
    jobs = [f"Skills required: j{k}" for k in range(12)]
    vecs = rng.normal(size=(len(resumes) + len(jobs), 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    base = dict(zip(resumes + jobs, vecs, strict=True))
    matches = [
        m(f"r{i}", f"j{k}", float(base[a] @ base[b] + 1) / 2, [(S, a, b)])
        for i, a in enumerate(resumes)
        for k, b in enumerate(jobs)
    ]
    model = load_model(minilm_path, "cpu")
    plain = train_head(model, matches, TrainParams(head_epochs=12), base_vectors=base)
    assert plain.info["head_steps"] == 12 and plain.info["val_matches"] == 0
    early = TrainParams(head_epochs=12, head_val_fraction=0.3, head_check_every=2, head_patience=1)
    stopped = train_head(model, matches, early, base_vectors=base)
    assert stopped.info["val_matches"] > 0 and "val_match_spearman" in stopped.info
    assert 2 <= stopped.info["head_steps"] <= 12 and stopped.info["head_steps"] % 2 == 0
