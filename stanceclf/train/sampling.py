"""Length-grouped training batches in a shuffled order (``training.group_by_length``).

Batches of sentences of about one length carry little padding (on the claim-type data 1.05 times the real
tokens against 2.1 times for random batches), so a step costs about half. transformers' own grouping
(``get_length_grouped_indices``) sorts each mega-batch of 50 batches from long to short and keeps that order:
every 50 steps the model sees the longest sentences, then shorter and shorter ones. In news text length goes
with the labels (bylines, headings and short quotes carry none), so each cycle pulls the head one way and then
the other: an MPNet LoRA fold trained that way never learned (dev macro F1 0 for three epochs,
``benchmarks/results/claim-types-student-crossval.md``), and transformers' users report loss spikes from the
same cycle (huggingface/transformers#20810). Here the batches keep transformers' grouping, and their order is
shuffled; a last batch short of ``batch_size`` stays last, so that every other batch stays whole.

An epoch's order depends on the seed and the epoch's number only (``set_epoch``, which the Trainer calls before
every epoch, a resumed one too), so a run resumed in the middle of an epoch skips exactly the batches it had
trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def shuffled_length_groups(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Every row index once, in runs of ``batch_size`` rows of about one length, the runs in an order drawn
    from ``seed``."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    order = get_length_grouped_indices(list(lengths), batch_size, generator=generator)
    # Mega-batches are whole multiples of batch_size, so only the very last batch can be short.
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [row for batch in shuffled + short for row in batch]


class ShuffledLengthGroupSampler:
    """A training sampler (row indices, ``len``, ``set_epoch``) of :func:`shuffled_length_groups`, drawn anew
    each epoch from ``seed`` and the epoch's number."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        # One 64-bit seed from the run's seed and the epoch (numpy's SeedSequence mixes them; seed + epoch
        # would give seed 3's second epoch the order of seed 4's first).
        epoch_seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1)
        return iter(shuffled_length_groups(self.lengths, self.batch_size, epoch_seed))
