"""Pure logic of batching: token-budget packing, the decoding and parsing of ingest
messages, the batcher's flushes, and the sorting of deliveries."""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace
from typing import Any

import pytest
from celery.app.task import Context
from celery.exceptions import ImproperlyConfigured, InvalidTaskError
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import loads

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import INGEST_RESUME, INGEST_RESUMES, create_celery_app
from jobfit.shared.config import Settings
from jobfit.shared.schemas import (
    MAX_BULK_DOCUMENTS,
    BulkIngestResult,
    IngestResult,
    MessageRejectedError,
)
from jobfit.tasks.consumer import (
    Batcher,
    RecordingConsumer,
    batch_strategy,
    checked_message,
    message_request,
    task_call,
    task_envelope,
)
from jobfit.tasks.delivery import sort_deliveries
from jobfit.workers.batching import BatchPipeline, Job
from jobfit.workers.embedders.packing import pack_by_tokens


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


@pytest.fixture(scope="module")
def app():
    app = create_celery_app(Settings())
    app.loader.import_default_modules()
    return app


@pytest.fixture(scope="module")
def ingest_resume(app):
    return app.tasks[INGEST_RESUME]


def request(*args, **kwargs) -> Context:
    return Context(id="t1", task=INGEST_RESUME, args=list(args), kwargs=kwargs, retries=0)


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
def test_valid_messages(ingest_resume, req, score):
    item = ingest_resume.parse(req)
    assert item.result is None and [d.id for d in item.docs] == ["r1"]
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
        (request("[" * 100_000), "ResumeDocument"),  # too deep for the parser: still a reason
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(ingest_resume, req, reason):
    item = ingest_resume.parse(req)
    assert item.docs == [] and item.result is None
    assert isinstance(item.error, MessageRejectedError) and reason in str(item.error), item


def bulk_request(*args: Any, **kwargs: Any) -> Context:
    return Context(id="b1", task=INGEST_RESUMES, args=list(args), kwargs=kwargs, retries=0)


def test_a_bulk_message_refuses_its_invalid_documents_alone(app):
    task = app.tasks[INGEST_RESUMES]
    documents = [GOOD, {"skills": ["no id"]}, json.dumps({"id": "r2"}), {"id": "r3", "x": 1}]
    item = task.parse(bulk_request(documents, score=False))
    assert item.error is None and item.bulk and item.score is False
    assert [d.id for d in item.docs] == ["r1", "r2"] and item.positions == [0, 2]
    assert sorted(item.refused) == [1, 3]
    assert (
        item.refused[1][0].startswith("document 1: ") and "id: Field required" in item.refused[1][0]
    )
    assert item.refused[3][1] == {"id": "r3", "x": 1}, "the refused document as it was sent"
    assert task.documents_in(bulk_request(documents)) == 4
    assert task.documents_in(bulk_request(documents="not a list")) == 1
    # The answer: every document in its place, the refused ones saying why.
    item.results = [
        IngestResult(status="created", document_id="r1"),
        IngestResult(status="unchanged", document_id="r2"),
    ]
    answer = BulkIngestResult.model_validate(item.result)
    assert [(d.status, d.document_id) for d in answer.documents] == [
        ("created", "r1"),
        ("refused", None),
        ("unchanged", "r2"),
        ("refused", "r3"),
    ]
    assert item.summary == {"created": 1, "refused": 2, "unchanged": 1}


@pytest.mark.parametrize(
    "req,reason",
    [
        (bulk_request([]), "documents must be a list of 1 to"),
        (bulk_request([GOOD] * (MAX_BULK_DOCUMENTS + 1)), f"of {MAX_BULK_DOCUMENTS + 1}"),
        (bulk_request(GOOD), "got dict"),
        (bulk_request(document=GOOD), "TypeError"),
        (bulk_request([GOOD], score="yes"), "score must be true or false"),
    ],
)
def test_a_bulk_message_that_is_not_a_list_of_documents_is_refused_whole(app, req, reason):
    item = app.tasks[INGEST_RESUMES].parse(req)
    assert item.docs == [] and item.result is None
    assert isinstance(item.error, MessageRejectedError) and reason in str(item.error), item


def test_the_pipeline_merges_queued_batches_within_messages_and_documents():
    pipeline = BatchPipeline(max_batch=10, max_documents=100)
    task = object()
    ran: list[list[str]] = []
    jobs = [
        Job(task, [f"m{i}"], lambda items: ran.append(items), lambda result: None, documents=40)
        for i in range(4)
    ]
    for job in jobs:
        pipeline._queue.append(job)  # queued while another batch ran
    taken = [pipeline._take(), pipeline._take()]
    assert [[j.items[0] for j in t] for t in taken if t] == [["m0", "m1"], ["m2", "m3"]]
    assert Job(task, ["a", "b"], print, print).size == 2, "one document a message by default"


class Message:
    """A kombu message as the strategy sees it (decoded JSON body, headers, properties)."""

    def __init__(self, body: Any, task_id: str | None = "t1", **headers: Any) -> None:
        self.body = body
        self.headers = {"task": INGEST_RESUME, "retries": 0}
        if task_id:
            self.headers["id"] = task_id
        self.headers.update(headers)
        self.properties = {"correlation_id": task_id}
        self.delivery_info = {"routing_key": "embed"}
        self.content_type = "application/json"

    def decode(self) -> Any:
        if isinstance(self.body, bytes):  # as kombu decodes (DecodeError, ContentDisallowed)
            return loads(self.body, self.content_type, "utf-8", accept=["application/json"])
        return self.body


def test_a_protocol_2_message_becomes_its_request():
    msg = Message([[GOOD], {"score": False}, {"callbacks": None}], retries=2, group="g1")
    req = message_request(msg, msg.decode(), "w@h")
    assert (req.id, req.task, req.retries, req.group) == ("t1", INGEST_RESUME, 2, "g1")
    assert (req.args, req.kwargs, req.hostname) == ([GOOD], {"score": False}, "w@h")
    assert req.delivery_info == {"routing_key": "embed"} and req.correlation_id == "t1"
    assert not req.called_directly and not req.ignore_result


def test_a_protocol_1_message_is_converted():
    body = {"task": INGEST_RESUME, "id": "t1", "args": [GOOD], "kwargs": {}}
    req = message_request(Message(body, task_id=None), body, "w@h")
    assert (req.id, req.args) == ("t1", [GOOD])


@pytest.mark.parametrize(
    "body",
    [
        "a string",
        [[GOOD], {}],
        [GOOD, {}, {}],
        [[GOOD], ["not", "kwargs"], {}],
    ],
)
def test_a_malformed_body_is_an_invalid_task(body):
    with pytest.raises(InvalidTaskError):
        message_request(Message(body), body, "w@h")


def test_a_message_without_a_task_id_is_an_invalid_task():
    body = [[GOOD], {}, {}]
    with pytest.raises(InvalidTaskError, match="task id"):
        message_request(Message(body, task_id=None), body, "w@h")


@pytest.mark.parametrize(
    "body,headers,reason",
    [
        ("a string", {}, "not [args, kwargs, embed]"),
        ({"document": GOOD}, {}, "an object without args"),
        ([[GOOD], {}, "embed"], {}, "options"),
        ([[GOOD], {}, {}], {"id": ["t1"]}, "task id"),
        ([[GOOD], {}, {}], {"id": ""}, "task id"),
        ([[GOOD], {}, {}], {"retries": "2"}, "retries"),
        ([[GOOD], {}, {}], {"retries": True}, "retries"),
        ([[GOOD], {}, {}], {"timelimit": "soon"}, "timelimit"),
        ([[GOOD], {}, {}], {"timelimit": [1, "x"]}, "timelimit"),
        ([[GOOD], {}, {}], {"timelimit": [1, 2, 3]}, "timelimit"),
    ],
)
def test_what_celery_would_trip_on_is_an_invalid_task(body, headers, reason):
    """Each of these raised inside Celery's request (or its execution) before: checked first."""
    msg = Message(json.dumps(body).encode(), **headers)
    with pytest.raises(InvalidTaskError, match=re.escape(reason)):
        task_call(msg, None)


def test_a_well_formed_call_passes_with_its_parts():
    msg = Message(json.dumps([[GOOD], {"score": False}, None]).encode(), timelimit=[None, 30])
    args, kwargs, embed, headers = task_call(msg, None)
    assert (args, kwargs, embed, headers["id"]) == ([GOOD], {"score": False}, {}, "t1")


def test_an_undecodable_body_raises_what_celery_handles():
    with pytest.raises(DecodeError):
        task_call(Message(b"{not json"), None)
    pickled = Message(b"\x80\x04")
    pickled.content_type = "application/x-python-serialize"
    with pytest.raises(ContentDisallowed):
        task_call(pickled, None)


@pytest.mark.parametrize(
    "headers,body,reason",
    [
        ({"task": [INGEST_RESUME], "id": "t1"}, b"[[], {}, {}]", "task name is a list"),
        ({"task": INGEST_RESUME}, b"[[], {}, {}]", "no task id"),
        ({"task": INGEST_RESUME, "id": {"a": 1}}, b"[[], {}, {}]", "no task id"),
        ({}, b'{"task": {"x": 1}, "id": "t1", "args": []}', "task name is a dict"),
        ({}, b'{"task": "jobfit.ingest_resume", "args": []}', "no task id"),
        ({"task": INGEST_RESUME, "id": "t1"}, b"[[], {}, {}]", None),
        ({}, b"{not json", None),  # Celery: a decode error
        ({}, b'{"no": "task"}', None),  # Celery: not a task message
    ],
)
def test_a_task_name_or_id_celery_cannot_look_up_is_malformed(headers, body, reason):
    msg = Message(body)
    msg.headers = headers
    found = task_envelope(msg)
    assert found is None if reason is None else reason in str(found), found


def test_the_strategy_runs_only_for_a_well_formed_call_and_its_errors_are_not_caught():
    calls: list[Any] = []

    def strategy(message: Any, body: Any, *rest: Any) -> None:
        calls.append(message)
        raise RuntimeError("a bug of ours")

    with pytest.raises(InvalidTaskError):
        checked_message(strategy, Message(b'"a string"'), None, None, None, set())
    assert calls == []
    good = Message(json.dumps([[GOOD], {}, {}]).encode())
    with pytest.raises(RuntimeError, match="a bug of ours"):
        checked_message(strategy, good, None, None, None, set())
    assert calls == [good]


def test_the_consumer_lets_an_error_of_ours_through(monkeypatch):
    """No net over Celery's handler: only the malformed envelope is rejected before it."""

    def celery_handler(self: Any, promise: Any = None) -> Any:
        def on_message(message: Any) -> None:
            raise KeyError("a bug of ours")

        return on_message

    monkeypatch.setattr(CeleryConsumer, "create_task_handler", celery_handler)
    consumer = RecordingConsumer.__new__(RecordingConsumer)  # no worker: its handler only
    handler = consumer.create_task_handler()
    with pytest.raises(KeyError, match="a bug of ours"):
        handler(Message(json.dumps([[GOOD], {}, {}]).encode()))


class Timer:
    def __init__(self) -> None:
        self.entries: list[Any] = []

    def call_repeatedly(self, secs: float, fn: Any) -> Any:
        entry = SimpleNamespace(secs=secs, fn=fn, cancelled=False)
        entry.cancel = lambda: setattr(entry, "cancelled", True)
        self.entries.append(entry)
        return entry


class Hub:
    """The event loop's ``call_soon``: calls wait for the loop's next turn (``turn``)."""

    def __init__(self) -> None:
        self.ready: list[Any] = []

    def call_soon(self, fn: Any) -> None:
        self.ready.append(fn)

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for fn in ready:
            fn()


class Pipeline:
    """Runs each submitted job at once and returns its result to its callback; ``idle``: as
    set (busy unless a test says otherwise, so that only the timer and the limits flush)."""

    def __init__(self) -> None:
        self.ran: list[list[str]] = []
        self.idle = False

    def submit(self, job: Any) -> bool:
        self.ran.append([r.request.id for r in job.items])
        job.on_return(job.run(job.items))
        return True


class Consumer:
    def __init__(self, app: Any, decoding_errors: list[Any]) -> None:
        self.app, self.hostname, self.connection_errors = app, "w@h", ()
        self.event_dispatcher = None
        self.timer = Timer()
        self.hub = Hub()
        self.on_decode_error = lambda message, exc: decoding_errors.append((message, exc))
        self.on_invalid_task = lambda body, message, exc: decoding_errors.append((message, exc))


def batcher(
    max_tasks: int, requeue: set[str], max_documents: int = 512
) -> tuple[Batcher, Consumer, Pipeline, list[Any]]:
    settings = Settings(
        batch={"max_tasks": max_tasks, "max_wait_s": 0.05, "max_documents": max_documents}
    )
    task = SimpleNamespace(
        app=SimpleNamespace(settings=settings),
        name=INGEST_RESUME,
        send_events=False,
        run_batch=lambda requests: requeue,
        # A message's documents: its first argument's length where that is a list (bulk).
        documents_in=lambda request: (
            len(request.args[0]) if request.args and isinstance(request.args[0], list) else 1
        ),
    )
    errors: list[Any] = []
    consumer = Consumer(task.app, errors)
    pipeline = Pipeline()
    return Batcher(task, consumer, pipeline), consumer, pipeline, errors  # type: ignore[arg-type]


def deliver(b: Batcher, task_id: str, outcome: list[tuple[str, str]], documents: int = 0) -> None:
    """One message (a bulk one of ``documents`` documents, if given) to the batcher."""
    msg = Message([[[GOOD] * documents] if documents else [GOOD], {}, {}], task_id=task_id)
    b.on_message(
        msg,
        None,
        lambda log, errors: outcome.append(("ack", task_id)),
        lambda log, errors, requeue: outcome.append(("requeue" if requeue else "drop", task_id)),
        set(),
    )


def test_the_batcher_flushes_on_count_and_on_its_timer_and_acks_or_requeues():
    b, consumer, pipeline, _ = batcher(max_tasks=3, requeue={"m4"})
    outcome: list[tuple[str, str]] = []
    for i in range(5):
        deliver(b, f"m{i}", outcome)
    assert pipeline.ran == [["m0", "m1", "m2"]], "a full buffer flushes at once"
    assert outcome == [("ack", "m0"), ("ack", "m1"), ("ack", "m2")]
    [entry] = consumer.timer.entries
    assert entry.secs == 0.05
    entry.fn()  # the timer: whatever is buffered
    assert pipeline.ran[-1] == ["m3", "m4"]
    assert outcome[-2:] == [("ack", "m3"), ("requeue", "m4")]
    entry.fn()  # idle: the timer stops until the next message
    assert entry.cancelled and b.timer is None
    deliver(b, "m5", outcome)
    assert len(consumer.timer.entries) == 2


def test_the_batcher_flushes_when_bulk_messages_fill_a_batch_with_documents():
    b, _, pipeline, _ = batcher(max_tasks=10, requeue=set(), max_documents=100)
    outcome: list[tuple[str, str]] = []
    for i in range(3):
        deliver(b, f"bulk{i}", outcome, documents=40)
    # The third would pass 100 documents: the first two go before it is buffered.
    assert pipeline.ran == [["bulk0", "bulk1"]], "a batch by documents, before 10 messages"
    assert b.documents == 40 and len(b.buffer) == 1
    deliver(b, "bulk3", outcome, documents=60)  # exactly full: goes at once
    assert pipeline.ran[-1] == ["bulk2", "bulk3"] and b.documents == 0


def test_an_idle_pipeline_gets_the_buffer_on_the_loops_next_turn_not_at_the_timer():
    b, consumer, pipeline, _ = batcher(max_tasks=10, requeue=set())
    pipeline.idle = True
    outcome: list[tuple[str, str]] = []
    deliver(b, "m0", outcome)
    deliver(b, "m1", outcome)  # arrived in the same turn: joins
    assert pipeline.ran == [] and len(consumer.hub.ready) == 1, "one flush due, not yet run"
    consumer.hub.turn()
    assert pipeline.ran == [["m0", "m1"]]
    assert outcome == [("ack", "m0"), ("ack", "m1")]
    # Busy: messages wait for the timer (or for a batch of theirs to return).
    pipeline.idle = False
    deliver(b, "m2", outcome)
    consumer.hub.turn()
    assert pipeline.ran == [["m0", "m1"]] and consumer.hub.ready == []
    # Busy again by the time the due flush runs: it waits (for the timer, here).
    pipeline.idle = True
    deliver(b, "m3", outcome)
    pipeline.idle = False
    consumer.hub.turn()
    assert pipeline.ran == [["m0", "m1"]] and len(b.buffer) == 2
    consumer.timer.entries[-1].fn()
    assert pipeline.ran[-1] == ["m2", "m3"]


def test_a_returning_batch_hands_on_what_arrived_while_it_ran():
    b, consumer, pipeline, _ = batcher(max_tasks=2, requeue=set())
    outcome: list[tuple[str, str]] = []
    returns: list[Any] = []

    def submit(job: Any) -> bool:  # runs later: ``returns`` holds its callback
        pipeline.ran.append([r.request.id for r in job.items])
        returns.append(lambda: job.on_return(job.run(job.items)))
        return True

    pipeline.submit = submit  # type: ignore[method-assign]
    deliver(b, "m0", outcome)
    deliver(b, "m1", outcome)  # full: runs
    deliver(b, "m2", outcome)  # buffered while the batch runs
    assert pipeline.ran == [["m0", "m1"]] and consumer.hub.ready == []
    pipeline.idle = True
    returns.pop()()  # the batch returns on the loop: acks, then the buffer is due
    assert outcome == [("ack", "m0"), ("ack", "m1")]
    consumer.hub.turn()
    assert pipeline.ran[-1] == ["m2"]


def test_a_batch_that_raised_puts_every_message_back():
    b, _, _, _ = batcher(max_tasks=2, requeue=set())
    b.task.run_batch = lambda requests: None  # what the pipeline hands back when it raised
    outcome: list[tuple[str, str]] = []
    deliver(b, "a", outcome)
    deliver(b, "b", outcome)
    assert outcome == [("requeue", "a"), ("requeue", "b")]


def test_without_an_event_loop_a_batch_runs_in_the_flushing_thread():
    b, _, _, _ = batcher(max_tasks=2, requeue={"m1"})
    b.pipeline = None  # Celery's in-memory broker: no hub, no pipeline thread
    outcome: list[tuple[str, str]] = []
    deliver(b, "m0", outcome)
    assert outcome == []
    deliver(b, "m1", outcome)
    assert outcome == [("ack", "m0"), ("requeue", "m1")]


def test_undecodable_and_malformed_messages_go_to_the_consumer_not_the_buffer():
    b, _, pipeline, errors = batcher(max_tasks=1, requeue=set())
    garbage = Message(b"{not json")
    b.on_message(garbage, None, None, None, set())
    malformed = Message("just a string")
    b.on_message(malformed, None, None, None, set())
    assert [m for m, _ in errors] == [garbage, malformed]
    assert isinstance(errors[1][1], InvalidTaskError)
    assert b.buffer == [] and pipeline.ran == []


def test_an_embed_worker_on_another_pool_is_refused(app):
    consumer = SimpleNamespace(pool=SimpleNamespace(), hub=None)
    with pytest.raises(ImproperlyConfigured, match="--pool solo"):
        batch_strategy(app.tasks[INGEST_RESUME], app, consumer)


def d(count: int, state: str = "running") -> repo.Delivery:
    return repo.Delivery("k", count, state)


def test_deliveries_sorted_fresh_suspects_dead_done():
    out = sort_deliveries(
        ["new", "back-twice", "tried-alone", "back-once", "too-often", "finished"],
        [d(1), d(3), d(2, "alone"), d(2), d(6, "alone"), d(4, "done")],
        max_deliveries=5,
    )
    assert out.fresh == ["new"]
    # not yet tried alone first (fewest deliveries first), those tried alone last
    assert out.suspects == ["back-once", "back-twice", "tried-alone"]
    assert [m for m, _ in out.dead] == ["too-often"]
    assert "delivered 6 times" in out.dead[0][1] and "max_deliveries=5" in out.dead[0][1]
    assert out.done == ["finished"]
