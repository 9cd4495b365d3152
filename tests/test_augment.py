"""Noisy copies of labelled sentences (stanceclf.train.augment)."""

from __future__ import annotations

from stanceclf.train.augment import MIN_WORDS, noisy_copies

SENTENCES = [
    "Moscow will answer any deployment of missiles in Poland with force, the minister warned on Tuesday.",
    "The government says the new sanctions are meant to cut the Kremlin's oil revenue by half.",
    "Too short here.",
]


def is_subsequence(words: list[str], of: list[str]) -> bool:
    remaining = iter(of)
    return all(word in remaining for word in words)


def test_augment_copies_are_distinct_new_and_reproducible():
    copies = noisy_copies(SENTENCES, 5, seed=7)
    assert copies == noisy_copies(SENTENCES, 5, seed=7)
    assert len(copies) == len(set(copies)) == 10, "5 distinct copies of each long sentence"
    assert not set(copies) & set(SENTENCES)
    assert noisy_copies(SENTENCES, 5, seed=8) != copies, "another seed, other copies"
    assert noisy_copies(SENTENCES, 0, seed=7) == []


def test_augment_copies_keep_only_words_of_their_sentence_in_order():
    copies = noisy_copies(SENTENCES[:1], 20, seed=1)
    source = SENTENCES[0].split()
    assert copies
    for copy in copies:
        assert is_subsequence(copy.split(), source) and MIN_WORDS <= len(copy.split()) < len(source)


def test_augment_short_sentences_are_not_copied():
    assert noisy_copies([SENTENCES[2]], 3, seed=0) == []


def test_augment_never_yields_an_excluded_sentence():
    everything = set(noisy_copies(SENTENCES[:1], 30, seed=2))
    excluded = sorted(everything)[:10]
    again = noisy_copies(SENTENCES[:1], 30, seed=2, exclude=set(excluded))
    assert not set(again) & set(excluded)


def test_augment_copies_of_a_sentence_do_not_depend_on_the_other_sentences():
    alone = noisy_copies(SENTENCES[1:2], 4, seed=3)
    assert noisy_copies(SENTENCES, 4, seed=3)[4:] == alone, "the first sentence's copies come first"
    assert noisy_copies([SENTENCES[1], SENTENCES[0]], 4, seed=3)[:4] == alone


def test_augment_whitespace_never_makes_a_copy_of_the_sentence_itself():
    spaced = "The  minister\twarned  that Moscow will answer with force."
    copies = noisy_copies([spaced], 30, seed=4, exclude={"The minister warned that Moscow will answer."})
    assert copies
    assert " ".join(spaced.split()) not in copies
    assert "The minister warned that Moscow will answer." not in copies


def test_augment_skips_sentences_that_hold_a_held_out_sentence():
    held = "The new sanctions are meant to cut the Kremlin's oil revenue by half."
    assert noisy_copies([SENTENCES[1]], 5, seed=5, held_out={held}) == []
    assert noisy_copies([held], 5, seed=5, held_out={"  " + held}) == []
    assert len(noisy_copies([SENTENCES[0]], 5, seed=5, held_out={held})) == 5


def test_augment_sentences_of_min_words_or_fewer_are_not_copied():
    assert noisy_copies(["one two three four"], 3, seed=0) == []
    assert noisy_copies(["one two three four five"], 3, seed=0)
