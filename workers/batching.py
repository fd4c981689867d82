"""The work thread: ingest batches, and every other task of the worker, run in one thread
beside the event loop of a solo worker. No Celery here: the consumer (``tasks.consumer``)
gathers ingest messages and hands each flush in as a ``Job``, the pool (``tasks.pool``) hands
in every other task as a job of one; acknowledging is their callbacks' business.

The event loop stays free while a job runs, however long: it sends heartbeats and task events
(``task-started``, ``PROGRESS`` states go to the result backend from the job itself) and
answers pings, so Flower shows a retraining worker online and ``jobfit health`` tells a busy
worker from a hung one.

A solo worker runs tasks in the thread that also fetches messages: while a batch encodes,
nothing is fetched, and the next batch starts from an empty buffer (measured: the fetch gaps
and the 50 ms gathering windows cost ~5 % of a bulk load, and the small batches that result
another ~8 % in packing). Here the batches run in one background thread instead; the event
loop goes on fetching (the model releases the GIL while it computes), and what queued up
meanwhile becomes the next batch, merged up to ``batch.max_tasks`` messages. An idle
pipeline takes a buffer at once (``tasks.consumer``): messages wait to be gathered only while
a batch runs, when waiting costs nothing.

At-least-once is kept: a message is acknowledged (or put back) by its batch's callback, which
runs on the event loop (``hub.call_soon``), after the batch's rows are committed. A batch that
never started when the worker stops, or whose worker is killed, is simply not acknowledged,
and the broker delivers it again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

# How long a warm shutdown waits for the batch in progress (its messages are redelivered if
# it is not done by then).
CLOSE_TIMEOUT_S = 120.0

Callback = Callable[[Any], None]


@dataclass
class Job:
    """One flush of a batch task: its messages (as the task takes them), how to run a list of
    them, and what to do with the result (acknowledge, or put back)."""

    task: Any
    items: list[Any]
    run: Callable[[list[Any]], Any]
    on_return: Callback
    documents: int = 0  # what its messages carry (a bulk message: many); 0: one each

    @property
    def size(self) -> int:
        return self.documents or len(self.items)


def run_items(run: Callable[[list[Any]], Any], items: list[Any]) -> Any:
    """One batch; None if it raised (its callbacks then put every message back)."""
    try:
        return run(items)
    except BaseException:
        log.exception("batch of %d raised", len(items))
        return None


class BatchPipeline:
    """One thread that runs batch jobs in order, merging queued jobs of the same task."""

    def __init__(self, max_batch: int, max_documents: int | None = None) -> None:
        self.max_batch = max_batch
        self.max_documents = max_documents or max_batch
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        # Calls for the event loop, in the order they were made (see ``_after``).
        self._done: deque[Callable[[], None]] = deque()
        self._closed = False
        self._running = False  # a batch is running (set and cleared by the pipeline thread)
        self._thread: threading.Thread | None = None
        self._call_soon: Callable[[Callable[[], None]], Any] | None = None

    def attach(self, call_soon: Callable[[Callable[[], None]], Any]) -> None:
        """The event loop's thread-safe ``call_soon`` (set again when the consumer restarts)."""
        self._call_soon = call_soon

    def on_loop(self, fn: Callable[..., Any] | None) -> Callable[..., None] | None:
        """``fn`` as a callable that runs it on the event loop (with the arguments given)."""
        if fn is None:
            return None

        def later(*args: Any) -> None:
            if self._call_soon is None:
                fn(*args)
            else:
                self._after(partial(fn, *args))

        return later

    def _after(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the event loop after every call queued before it. kombu's hub keeps
        its ``call_soon`` callbacks in a set, in no order: the calls wait in one FIFO here and
        each ``call_soon`` drains it, so a task's start is reported before its end, and
        batches are acknowledged in the order they ran."""
        with self._cond:
            self._done.append(call)
        if self._call_soon is not None:
            self._call_soon(self.drain)

    def submit(self, job: Job) -> bool:
        """Queue a job; False once closed (its messages stay unacknowledged)."""
        with self._cond:
            if self._closed:
                return False
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="jobfit-work")
                self._thread.daemon = True  # a killed worker's batch is redelivered
                self._thread.start()
            self._cond.notify()
        return True

    def _take(self) -> list[Job] | None:
        """The next job and the queued jobs of the same task after it, within max_batch
        messages and max_documents documents."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self._running = True
            jobs = [self._queue.popleft()]
            size, documents = len(jobs[0].items), jobs[0].size
            while (
                self._queue
                and self._queue[0].task is jobs[0].task
                and size + len(self._queue[0].items) <= self.max_batch
                and documents + self._queue[0].size <= self.max_documents
            ):
                jobs.append(self._queue.popleft())
                size += len(jobs[-1].items)
                documents += jobs[-1].size
            return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            result = run_items(jobs[0].run, [it for job in jobs for it in job.items])
            with self._cond:  # idle before the callbacks: they may hand in the next batch
                self._running = False
            for job in jobs:
                self._after(partial(job.on_return, result))

    def drain(self) -> None:
        """Run the queued calls, oldest first (on the event loop's thread)."""
        while True:
            with self._cond:
                if not self._done:
                    return
                call = self._done.popleft()
            try:
                call()
            except Exception:
                log.exception("callback failed")

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def idle(self) -> bool:
        """Nothing running and nothing queued: a batch handed in now starts at once."""
        with self._cond:
            return not self._running and not self._queue

    @property
    def pending(self) -> int:
        """Messages queued, not yet started."""
        with self._cond:
            return sum(len(job.items) for job in self._queue)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Start nothing new; wait for the batch in progress, then run the finished batches'
        callbacks here (the event loop has stopped). Queued jobs are dropped unacknowledged."""
        with self._cond:
            self._closed = True
            dropped = sum(len(job.items) for job in self._queue)
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if dropped:
            log.info("%d queued message(s) left for redelivery", dropped)
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("batch still running after %.0fs: left for redelivery", timeout_s)
        self.drain()
