"""Length-sorted, dynamically padded batches: how every forward pass is fed (torch and every backend).

A leaf of :mod:`stanceclf.infer`, shared by the loaded model, the server's batcher and the int8 backend's
calibration, so that each builds its batches the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Tokens per text of ``batch_size`` that one forward pass may hold, padding included: a batch of short
#: sentences stays whole, while one long sentence no longer pads a whole batch to its length (on a seed
#: article of 38 sentences, padded tokens fall from 4,864 to 2,644 for 1,493 real ones).
TOKENS_PER_ROW = 32


def length_batches(order: list[int], ids: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` (indices sorted by length) that respect both batch limits."""
    budget = batch_size * TOKENS_PER_ROW
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * len(ids[index]) > budget):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def padded_arrays(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``, int64 ``(len(rows), longest)``: the rows padded at the end."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=np.int64)
    for position, row in enumerate(rows):
        input_ids[position, : len(row)] = row
        attention[position, : len(row)] = 1
    return input_ids, attention
