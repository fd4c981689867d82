"""Pure logic of batching: token-budget packing and the parsing of ingest messages."""

from __future__ import annotations

import json
import random

import pytest
from celery_batches import SimpleRequest

from jobfit.shared.schemas import ResumeDocument
from jobfit.tasks.ingest import parse
from jobfit.workers.model import pack_by_tokens


@pytest.mark.parametrize("overhead", [0, 64])
@pytest.mark.parametrize("budget,max_batch", [(64, 16), (512, 16), (512, 4), (10_000, 128)])
def test_packing_keeps_every_pass_within_budget_and_size(budget, max_batch, overhead):
    lengths = [3, 90, 7, 7, 200, 15, 15, 15, 40, 3, 600, 12] * 5
    passes = pack_by_tokens(lengths, budget, max_batch, overhead)
    flat = [i for p in passes for i in p]
    assert sorted(flat) == list(range(len(lengths))), "every text exactly once"
    for p in passes:
        assert len(p) <= max_batch
        longest = max(lengths[i] for i in p)
        assert len(p) * longest <= budget or len(p) == 1, "over budget only when alone"
    order = [lengths[i] for i in flat]
    assert order == sorted(order), "passes are cut from the length-sorted texts"


def test_packing_nothing():
    assert pack_by_tokens([], 512, 16) == []
    assert pack_by_tokens([], 512, 16, 64) == []


def cost(lengths: list[int], passes: list[list[int]], overhead: int) -> int:
    return sum(overhead + len(p) * max(lengths[i] for i in p) for p in passes)


def test_packing_cuts_where_padding_costs_more_than_a_pass():
    lengths = [31, 10, 12, 30, 11]
    greedy = pack_by_tokens(lengths, 512, 16)
    assert [[lengths[i] for i in p] for p in greedy] == [[10, 11, 12, 30, 31]]
    packed = pack_by_tokens(lengths, 512, 16, 20)
    assert [[lengths[i] for i in p] for p in packed] == [[10, 11, 12], [30, 31]]
    assert cost(lengths, packed, 20) < cost(lengths, greedy, 20)


@pytest.mark.parametrize("seed", range(20))
def test_packing_is_never_costlier_than_the_greedy_fill(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(4, 40), rng.randint(40, 384)]) for _ in range(150)]
    for overhead in (16, 64, 256):
        packed = pack_by_tokens(lengths, 512, 16, overhead)
        greedy = pack_by_tokens(lengths, 512, 16)
        assert cost(lengths, packed, overhead) <= cost(lengths, greedy, overhead)


def request(*args, **kwargs) -> SimpleRequest:
    return SimpleRequest(
        id="t1",
        name="jobfit.ingest_resume",
        args=args,
        kwargs=kwargs,
        delivery_info={},
        hostname="w@h",
        ignore_result=False,
        reply_to=None,
        correlation_id=None,
        request_dict={},
    )


GOOD = {"id": "r1", "skills": ["Python"]}


@pytest.mark.parametrize(
    "req,score",
    [
        (request(GOOD), True),
        (request(document=GOOD, score=False), False),
        (request(GOOD, False), False),
        (request(json.dumps(GOOD)), True),
    ],
)
def test_valid_messages(req, score):
    item = parse(req, ResumeDocument)
    assert item.result is None and item.doc is not None and item.doc.id == "r1"
    assert item.score is score


@pytest.mark.parametrize(
    "req,reason",
    [
        (request(), "TypeError"),
        (request(GOOD, bogus=1), "TypeError"),
        (request(GOOD, GOOD, GOOD), "TypeError"),
        (request(GOOD, score="yes"), "score must be true or false"),
        (request({"skills": ["x"]}), "id: Field required"),
        (request("{not json"), "Invalid JSON"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(req, reason):
    item = parse(req, ResumeDocument)
    assert item.doc is None and item.result is not None
    assert item.result["status"] == "rejected" and reason in item.result["reason"], item.result
