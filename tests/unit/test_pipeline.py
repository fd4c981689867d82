"""The batch pipeline's own logic (workers.batching): merging, callbacks on the loop's thread,
closing. The worker-level behaviour (acks after commit, redelivery) is in the integration
and fault suites, through a real worker."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

from jobfit.workers.batching import BatchPipeline, Job

WAIT_S = 10.0


class Loop:
    """Stands in for the event loop: call_soon from any thread, run here on ``run_once``."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self.thread_ids: list[int] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.calls.put(fn)

    def run_once(self) -> None:
        self.calls.get(timeout=WAIT_S)()
        self.thread_ids.append(threading.get_ident())


class Gate:
    """A batch function that blocks until released, recording what it ran."""

    def __init__(self) -> None:
        self.ran: list[list[Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        self.ran.append(items)
        self.started.set()
        assert self.release.wait(WAIT_S)
        return {"requeue": [i for i in items if str(i).startswith("bad")]}


def job(task: object, items: list[Any], run: Gate, results: list[Any]) -> Job:
    return Job(task, items, run, lambda result: results.append((items, result)))


def busy(max_batch: int, task: object, first: list[Any]):
    """A pipeline on a stand-in loop, busy with ``first`` (held until gate.release)."""
    loop, gate, results = Loop(), Gate(), []
    pipeline = BatchPipeline(max_batch=max_batch)
    pipeline.attach(loop.call_soon)
    pipeline.submit(job(task, first, gate, results))
    assert gate.started.wait(WAIT_S)
    return loop, gate, results, pipeline


def test_jobs_queued_while_busy_are_merged_per_task_within_the_limit():
    resume, job_task = object(), object()
    loop, gate, results, pipeline = busy(4, resume, [1, 2])  # these queue up meanwhile:
    for items, task in (([3, 4], resume), ([5, 6], resume), ([7], resume), (["j"], job_task)):
        pipeline.submit(job(task, items, gate, results))
    assert pipeline.pending == 6
    gate.release.set()
    for _ in range(4):
        loop.run_once()
    # [3, 4] + [5, 6] fill 4, [7] waits; the job task's message never joins a resume batch
    assert gate.ran == [[1, 2], [3, 4, 5, 6], [7], ["j"]]
    assert [items for items, _ in results] == [[1, 2], [3, 4], [5, 6], [7], ["j"]]
    assert set(loop.thread_ids) == {threading.get_ident()}  # callbacks on the loop's thread
    pipeline.close()


def test_the_pipeline_is_idle_only_with_nothing_running_or_queued():
    task = object()
    assert BatchPipeline(max_batch=4).idle, "new: nothing ran yet"
    loop, gate, results, pipeline = busy(4, task, ["a"])
    assert not pipeline.idle, "running"
    pipeline.submit(job(task, ["b"], gate, results))
    gate.release.set()
    loop.run_once()  # a's callback: by then the pipeline has left a behind
    loop.run_once()  # b's
    assert [items for items, _ in results] == [["a"], ["b"]]
    assert pipeline.idle
    pipeline.close()


def test_a_merged_batch_hands_its_result_to_every_flush():
    task = object()
    loop, gate, results, pipeline = busy(10, task, ["first"])
    pipeline.submit(job(task, ["ok"], gate, results))
    pipeline.submit(job(task, ["bad-1"], gate, results))
    gate.release.set()
    loop.run_once()
    loop.run_once()
    assert results[-2:] == [(["ok"], {"requeue": ["bad-1"]}), (["bad-1"], {"requeue": ["bad-1"]})]
    pipeline.close()


def test_a_batch_that_raises_gives_none_so_its_messages_go_back():
    loop, results = Loop(), []

    def boom(items: list[Any]) -> Any:
        raise RuntimeError("batch failed")

    pipeline = BatchPipeline(max_batch=10)
    pipeline.attach(loop.call_soon)
    pipeline.submit(Job(object(), [1], boom, lambda r: results.append(r)))
    loop.run_once()
    assert results == [None]  # the batcher's callback requeues on None
    pipeline.submit(Job(object(), [2], lambda items: {"requeue": []}, results.append))
    loop.run_once()  # the thread survived
    assert results[-1] == {"requeue": []}
    pipeline.close()


def test_close_finishes_the_running_batch_and_drops_the_queued_ones():
    task = object()
    _, gate, results, pipeline = busy(1, task, ["running"])
    pipeline.submit(job(task, ["queued"], gate, results))
    threading.Timer(0.2, gate.release.set).start()
    pipeline.close()  # waits for "running", runs its callback here (the loop has stopped)
    assert [items for items, _ in results] == [["running"]]
    assert gate.ran == [["running"]]  # "queued" never ran: unacknowledged, redelivered
    assert not pipeline.submit(job(task, ["late"], gate, results))


@pytest.mark.parametrize("max_batch", [1, 3])
def test_a_single_flush_larger_than_the_limit_still_runs_whole(max_batch: int):
    loop, results = Loop(), []
    pipeline = BatchPipeline(max_batch=max_batch)
    pipeline.attach(loop.call_soon)
    ran: list[list[int]] = []
    pipeline.submit(Job(object(), [1, 2, 3, 4], lambda i: ran.append(i), results.append))
    loop.run_once()
    assert ran == [[1, 2, 3, 4]]  # flushes are cut to max_tasks before they get here
    pipeline.close()


def test_loop_calls_run_in_the_order_they_were_made_whatever_order_the_loop_takes():
    """kombu's hub keeps call_soon callbacks in a set: a task's accept callback and its done
    callback may be taken in either order; the pipeline still runs them in order."""
    scheduled: list[Callable[[], None]] = []
    p = BatchPipeline(max_batch=4)
    p.attach(scheduled.append)
    ran: list[str] = []
    accepted, done = p.on_loop(ran.append), p.on_loop(ran.append)
    assert accepted is not None and done is not None
    accepted("accepted")
    done("done")
    for call in reversed(scheduled):  # the loop takes the second one first
        call()
    assert ran == ["accepted", "done"]
