"""Length-grouped training batches: little padding, and no long-to-short cycle in their order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stanceclf.train.sampling import ShuffledLengthGroupSampler, shuffled_length_groups

BATCH = 16


def lengths(count: int = 3_205, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 128) for _ in range(count)]


def batches_of(order: list[int]) -> list[list[int]]:
    return [order[start:start + BATCH] for start in range(0, len(order), BATCH)]


def share_of_shorter_next_batches(order: list[int], sizes: list[int]) -> float:
    longest = [max(sizes[row] for row in batch) for batch in batches_of(order)]
    return float(np.mean([after < before for before, after in zip(longest, longest[1:])]))


def test_every_row_comes_once_in_batches_of_about_one_length():
    sizes = lengths()
    order = shuffled_length_groups(sizes, BATCH, seed=3)
    assert sorted(order) == list(range(len(sizes)))
    spread = [max(sizes[row] for row in batch) - min(sizes[row] for row in batch) for batch in batches_of(order)]
    assert np.mean(spread) < 5, "random batches of these lengths spread over about 100 tokens"
    assert len(batches_of(order)[-1]) == len(sizes) % BATCH, "the one short batch comes last"
    assert all(len(batch) == BATCH for batch in batches_of(order)[:-1])


def test_batch_order_has_no_long_to_short_cycle():
    """transformers' grouping sorts each run of 50 batches from long to short (nearly every next batch is
    shorter); shuffled, about half are."""
    from transformers.trainer_pt_utils import get_length_grouped_indices
    import torch

    sizes = lengths()
    theirs = get_length_grouped_indices(sizes, BATCH, generator=torch.Generator().manual_seed(3))
    assert share_of_shorter_next_batches(theirs, sizes) > 0.9
    assert 0.35 < share_of_shorter_next_batches(shuffled_length_groups(sizes, BATCH, seed=3), sizes) < 0.65


def test_sampler_order_is_drawn_from_the_seed_and_the_epoch_alone():
    sizes = lengths(500)
    sampler = ShuffledLengthGroupSampler(sizes, BATCH, seed=13)
    first = list(sampler)
    assert len(sampler) == 500 and list(sampler) == first, "the same epoch twice: the same order"
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    again = ShuffledLengthGroupSampler(sizes, BATCH, seed=13)
    again.set_epoch(1)
    assert list(again) == second, "a resumed run draws its epoch's order again"
    assert list(ShuffledLengthGroupSampler(sizes, BATCH, seed=14)) != first


def test_sampler_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ShuffledLengthGroupSampler([3, 4], 0, seed=1)
