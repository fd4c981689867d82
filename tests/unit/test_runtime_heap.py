"""The worker's heap after a model swap (``workers.runtime.settle_heap``): the model's objects
frozen out of the cycle collector's sight, a replaced model's cycles collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from jobfit.shared.config import Settings
from jobfit.workers import runtime
from jobfit.workers.runtime import WorkerRuntime, settle_heap


class Node:
    """An object in a reference cycle: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap as it was


def test_the_heap_is_frozen_after_a_swap_and_a_replaced_models_cycles_are_collected():
    old = Node()  # a model's cycle, in use when the heap was frozen
    gone = weakref.ref(old)
    settle_heap()
    assert gc.get_freeze_count() > 0
    del old  # the model replaced: its cycle is garbage, frozen
    gc.collect()
    assert gone() is not None, "a frozen cycle is out of the collector's sight"
    settle_heap()  # the next swap: unfrozen, collected, the rest frozen again
    assert gone() is None
    assert gc.get_freeze_count() > 0


def test_the_heap_is_settled_when_the_model_changes_not_at_every_check(monkeypatch):
    settled: list[int] = []
    monkeypatch.setattr(runtime, "settle_heap", lambda: settled.append(1))
    rt = WorkerRuntime(Settings())
    first, second = object(), object()
    served = iter([first, first, second])  # what the registry says at each check
    monkeypatch.setattr(rt, "_follow_registry", lambda factory: next(served))
    assert rt.model() is first and settled == [1], "the first load"
    assert rt.model(refresh=True) is first and settled == [1], "the same model: no collection"
    assert rt.model(refresh=True) is second and settled == [1, 1], "a swap"
    rt.dispose()
