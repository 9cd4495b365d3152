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
from collections.abc import Iterable

#: Chance that a word is dropped.
WORD_DROP = 0.1
#: Chance that only a window of the words is kept, and the shortest such window (share of the words).
WINDOW_CHANCE = 0.4
WINDOW_MIN_SHARE = 0.5
#: A copy keeps at least this many words, and is shorter than its sentence: a sentence of this many
#: words or fewer is not copied.
MIN_WORDS = 4
#: Draws per wanted copy before giving up on a sentence (a short one may yield few distinct copies).
DRAWS_PER_COPY = 4


def noisy_copies(texts: list[str], copies: int, *, seed: int, exclude: Iterable[str] = (),
                 held_out: Iterable[str] = ()) -> list[str]:
    """Up to ``copies`` distinct noisy copies of each distinct text, in the order of ``texts``.

    No copy equals a text of ``texts`` or ``exclude``, whitespace aside. A text that is, or contains,
    a ``held_out`` sentence, case aside (a dev or test sentence repeated in a training article: wire
    copy, boilerplate), is not copied, so no near copy of a held-out sentence is made. Each text's copies
    depend only on the seed and that text: adding or reordering other texts leaves them as they were.
    """
    if copies < 1:
        return []
    taken = {_normal(text) for text in texts} | {_normal(text) for text in exclude}
    held = {normal.lower() for normal in map(_normal, held_out) if len(normal.split()) >= MIN_WORDS}
    lengths = {len(normal.split()) for normal in held}
    out = []
    for text in dict.fromkeys(texts):
        words = text.split()
        if len(words) <= MIN_WORDS or _holds_any(text.lower().split(), held, lengths):
            continue
        # A string seed is hashed the same way in every process (unlike hash()), so the processes of a
        # distributed run make the same copies.
        rng = random.Random(f"{seed}\x00{text}")
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


def _normal(text: str) -> str:
    return " ".join(text.split())


def _holds_any(words: list[str], held: set[str], lengths: set[int]) -> bool:
    """Whether a contiguous run of ``words`` (the whole text included) is one of ``held`` (both
    lower-cased: a quoted sentence loses its capital inside another)."""
    return any(" ".join(words[start: start + size]) in held
               for size in lengths if size <= len(words)
               for start in range(len(words) - size + 1))


def _noisy(words: list[str], rng: random.Random) -> list[str]:
    if rng.random() < WINDOW_CHANCE:
        size = rng.randint(max(MIN_WORDS, int(len(words) * WINDOW_MIN_SHARE)), len(words))
        start = rng.randint(0, len(words) - size)
        words = words[start: start + size]
    kept = [w for w in words if rng.random() >= WORD_DROP]
    return kept if len(kept) >= MIN_WORDS else words
