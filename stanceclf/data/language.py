"""A cheap check that a document is English, the only language the models were trained on.

No language-identification model: the share of a document's words that are among the most
common English function words. English news prose scores about 0.4; German, French, Spanish
or Russian text scores under 0.05 (their words are mostly other words, or not in Latin script).
Below :data:`MIN_ENGLISH_SHARE`, with enough words to judge, a document is taken for another
language and the process warns once (:class:`~stanceclf.errors.LanguageWarning`): scores are
still given, since a few foreign quotes or names in an English corpus are normal.
"""

from __future__ import annotations

import re
import threading
import warnings

from stanceclf.errors import LanguageWarning

_COMMON_ENGLISH = frozenset("""
a about after all also an and any are as at be been but by can could did do does for from had has have he her
him his how i if in into is it its just more most my no not now of on one only or other our out over said she
so some than that the their them then there these they this those to up us was we were what when which while
who will with would you your
""".split())
_WORD = re.compile(r"[^\W\d_]+")
#: Below this share of common English words a document is taken for another language.
MIN_ENGLISH_SHARE = 0.1
#: Fewer words than this (a headline, a caption) are too few to judge.
MIN_WORDS = 20
#: Characters of a document looked at: the opening tells the language.
SAMPLE_CHARS = 5_000

_warned = threading.Event()


def english_share(text: str) -> tuple[float, int]:
    """``(share of common English words, words counted)`` in the opening of ``text``."""
    words = _WORD.findall(text[:SAMPLE_CHARS].lower())
    if not words:
        return 0.0, 0
    return sum(word in _COMMON_ENGLISH for word in words) / len(words), len(words)


def looks_non_english(text: str) -> bool:
    share, words = english_share(text)
    return words >= MIN_WORDS and share < MIN_ENGLISH_SHARE


def warn_if_not_english(text: str, where: str) -> None:
    """Warn, once per process, when a document does not look English (cheap once warned)."""
    if _warned.is_set() or not looks_non_english(text):
        return
    _warned.set()
    share, _ = english_share(text)
    warnings.warn(LanguageWarning(
        f"{where} does not look like English ({share:.0%} common English words): the model was trained on "
        "English news only, and its scores on other languages are untested (warned once)"), stacklevel=3)
