"""Pure logic of batching: token-budget packing and the parsing of ingest messages."""

from __future__ import annotations

import json

import pytest
from celery_batches import SimpleRequest

from shared.schemas import ResumeDocument
from tasks.ingest import parse
from workers.model import pack_by_tokens


@pytest.mark.parametrize("budget,max_batch", [(64, 16), (512, 16), (512, 4), (10_000, 128)])
def test_packing_keeps_every_pass_within_budget_and_size(budget, max_batch):
    lengths = [3, 90, 7, 7, 200, 15, 15, 15, 40, 3, 600, 12] * 5
    passes = pack_by_tokens(lengths, budget, max_batch)
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
