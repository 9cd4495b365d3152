"""Noisy copies of labelled sentences: transfer text for a student in the labelled data's own genre.

A student learns its teacher's judgement from the sentences the teacher scores. When the unlabelled
inputs are of another genre than the labelled articles (the claim-type data: Russia-Ukraine articles
are all labelled, the unlabelled corpus is PTC and climate news), the student sees the teacher's
judgement on that genre only on the labelled sentences themselves. Noisy copies of those sentences
add nearby points: some keep their claim, some lose it (the cue word dropped, the clause cut away),
and the teacher's score says which. The copies are never gold: only the teacher labels them.

The noise is that of Tang et al. (2019, "Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks"), at the level of words so that a teacher and a student with different tokenizers
read the same text: each word is dropped with a small probability, and with some probability only a
contiguous window of the words is kept.
"""

from __future__ import annotations

import random

#: Chance that a word is dropped.
WORD_DROP = 0.1
#: Chance that only a window of the words is kept, and the shortest such window (share of the words).
WINDOW_CHANCE = 0.4
WINDOW_MIN_SHARE = 0.5
#: A copy keeps at least this many words; shorter sentences are not copied.
MIN_WORDS = 4
#: Draws per wanted copy before giving up on a sentence (a short one may yield few distinct copies).
DRAWS_PER_COPY = 4


def noisy_copies(texts: list[str], copies: int, *, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    """Up to ``copies`` distinct noisy copies of each text, in the order of ``texts``; none equals a
    text of ``texts`` or of ``exclude``. The same arguments give the same copies."""
    rng = random.Random(seed)
    taken = set(texts) | set(exclude)
    out = []
    for text in texts:
        words = text.split()
        if copies < 1 or len(words) < MIN_WORDS:
            continue
        made = 0
        for _ in range(copies * DRAWS_PER_COPY):
            copy = " ".join(_noisy(words, rng))
            if copy not in taken:
                taken.add(copy)
                out.append(copy)
                made += 1
                if made == copies:
                    break
    return out


def _noisy(words: list[str], rng: random.Random) -> list[str]:
    if rng.random() < WINDOW_CHANCE:
        size = rng.randint(max(MIN_WORDS, int(len(words) * WINDOW_MIN_SHARE)), len(words))
        start = rng.randint(0, len(words) - size)
        words = words[start: start + size]
    kept = [w for w in words if rng.random() >= WORD_DROP]
    return kept if len(kept) >= MIN_WORDS else words
