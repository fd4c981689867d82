"""Cutting a batch of texts into forward passes: by token length, within a token budget.

Pure (no model): every backend tokenizes, then asks ``pack_by_tokens`` for the passes.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_by_tokens(
    lengths: Sequence[int], budget: int, max_batch: int, pass_overhead: int = 0
) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into forward passes whose padded size
    (count x longest) stays within ``budget`` tokens and whose count within ``max_batch``.
    A text longer than the budget gets a pass of its own.

    The cuts are the cheapest under a simple cost model of a pass, ``pass_overhead`` +
    padded tokens (dynamic programming over the sorted lengths; each pass is a run of them,
    which is optimal for this cost). A greedy fill (cut when the budget is reached) is as good
    when there are many texts of each length, but a worker's batch has a few hundred texts
    spread over every length, and filling passes then pads short texts to long ones.
    ``pass_overhead`` is what one more pass costs, in tokens: 0 gives the greedy fill."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if pass_overhead <= 0:
        return pack_greedy(order, lengths, budget, max_batch)
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0] + [0] * n  # best[j]: cheapest cost of the first j sorted texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]  # the run (i, j] is padded to its last length
        best[j], cut[j] = best[j - 1] + pass_overhead + longest, j - 1
        for size in range(2, min(max_batch, j) + 1):
            if size * longest > budget:
                break
            cost = best[j - size] + pass_overhead + size * longest
            if cost <= best[j]:  # ties: the larger pass
                best[j], cut[j] = cost, j - size
    passes: list[list[int]] = []
    j = n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def pack_greedy(
    order: list[int], lengths: Sequence[int], budget: int, max_batch: int
) -> list[list[int]]:
    """Fill passes in ``order`` (shortest first), cutting when the next text would overflow
    the budget or the batch size."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > budget or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
