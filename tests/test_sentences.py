"""Sentence splitting: exact offsets, the newline rule, fragment merging and the length cap, per backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stanceclf.data.sentences import SentenceSplitter, split_sentences

SEEDS = sorted((Path(__file__).resolve().parents[1] / "examples" / "seeds").glob("*.txt"))
BACKENDS = ["syntok", "pysbd", "blingfire"]

ABBREVIATIONS = "The U.S. will respond. Mr. Smith met Dr. Jones in Washington, D.C. on Jan. 5. It rained."
QUOTES = '"We will win," he said. "Nobody doubts it." Then he left.'
PARAGRAPHS = "Arms race looms\nPrices will rise. Rates will follow.\n\nA new paragraph starts here.\n"
HEADLINES = "Russia and China: partners or rivals\nBy Jane Doe\nMoscow, Jan. 5\nThe talks failed. Nobody was surprised."
NUMBERED = "The plan has three steps:\n1. Build more missiles.\n2. Deploy them in Europe.\n3) Negotiate from strength."
INLINE_NUMBERED = "1. Cut the budget. 2. Raise taxes."
CRLF = "Headline\r\nPrices will rise.\r\nThe bank failed. Rates fell.\r\n"
TRICKY = [ABBREVIATIONS, QUOTES, PARAGRAPHS, HEADLINES, NUMBERED, INLINE_NUMBERED, CRLF,
          "  leading space. and lower case start.  ", "Wait... what?! Really?",
          "(Reuters) - Shares fell 2.5% on Monday.",
          "Ellipsis at the end…", "…", "A\n\n\nB", "—\nDash line"]


def check_spans(text: str, sentences) -> None:
    """The invariants every split must keep, whatever the backend."""
    covered = set()
    previous_end = 0
    for s in sentences:
        assert text[s.start:s.end] == s.text
        assert s.text and s.text == s.text.strip(), f"not stripped: {s.text!r}"
        assert "\n" not in s.text, f"a sentence crosses a newline: {s.text!r}"
        assert s.start >= previous_end, "sentences overlap or are out of order"
        previous_end = s.end
        covered.update(range(s.start, s.end))
    lost = [i for i, ch in enumerate(text) if not ch.isspace() and i not in covered]
    assert lost == [], f"characters outside every sentence: {[text[i] for i in lost[:10]]}"


def texts(text: str, backend: str = "syntok") -> list[str]:
    return [s.text for s in SentenceSplitter(backend=backend).split(text)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.stem)
def test_sentences_seed_articles_offsets_exact(seed, backend):
    text = seed.read_text(encoding="utf-8")
    sentences = SentenceSplitter(backend=backend).split(text)
    assert len(sentences) > 10
    check_spans(text, sentences)
    # The title (first line, no final punctuation) is a sentence of its own.
    assert sentences[0].text == text.split("\n", 1)[0].strip()


def test_sentences_seeds_present():
    assert len(SEEDS) == 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_sentences_tricky_strings_offsets_exact(text, backend):
    check_spans(text, SentenceSplitter(backend=backend).split(text))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", ["", " ", "\n", "\n\n\n", " \t\r\n \r\n\u00a0 ", "\r\n"])
def test_sentences_whitespace_only_gives_nothing(text, backend):
    assert SentenceSplitter(backend=backend).split(text) == []


def test_sentences_syntok_abbreviations():
    assert texts(ABBREVIATIONS) == ["The U.S. will respond.", "Mr. Smith met Dr. Jones in Washington, D.C. on Jan. 5.",
                                    "It rained."]


def test_sentences_syntok_abbreviation_before_capitalised_word():
    assert texts("Washington, D.C. is big. The U.S. Army said so. He arrived on Jan. 5, 2019. Then left.") == [
        "Washington, D.C. is big.", "The U.S. Army said so.", "He arrived on Jan. 5, 2019.", "Then left."]


def test_sentences_syntok_quotes():
    assert texts(QUOTES) == ['"We will win," he said.', '"Nobody doubts it."', "Then he left."]
    assert texts('He said: "We will win." Then he left. "Really?" she asked.') == [
        'He said: "We will win."', "Then he left.", '"Really?" she asked.']


def test_sentences_syntok_blank_line_and_single_newline_paragraph_breaks():
    assert texts(PARAGRAPHS) == ["Arms race looms", "Prices will rise.", "Rates will follow.",
                                 "A new paragraph starts here."]


def test_sentences_headlines_without_final_punctuation_end_at_the_newline():
    assert texts(HEADLINES) == ["Russia and China: partners or rivals", "By Jane Doe", "Moscow, Jan. 5",
                                "The talks failed.", "Nobody was surprised."]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentences_numbered_list_items_keep_their_marker(backend):
    assert texts(NUMBERED, backend) == ["The plan has three steps:", "1. Build more missiles.",
                                        "2. Deploy them in Europe.", "3) Negotiate from strength."]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentences_inline_numbered_items_keep_their_marker(backend):
    assert texts(INLINE_NUMBERED, backend) == ["1. Cut the budget.", "2. Raise taxes."]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentences_bullet_markers_stay_attached(backend):
    assert texts("Key points:\n- Budgets rise.\n* Talks stall.\n• Arms race looms", backend) == [
        "Key points:", "- Budgets rise.", "* Talks stall.", "• Arms race looms"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentences_crlf_text(backend):
    sentences = SentenceSplitter(backend=backend).split(CRLF)
    check_spans(CRLF, sentences)
    assert [s.text for s in sentences] == ["Headline", "Prices will rise.", "The bank failed.", "Rates fell."]
    assert [(s.start, s.end) for s in sentences] == [(0, 8), (10, 27), (29, 45), (46, 57)]


def test_sentences_punctuation_only_piece_joins_previous_sentence():
    sentences = texts("Is it over? ... Not yet.")
    assert all(any(ch.isalnum() for ch in s) for s in sentences)
    assert "".join(sentences).replace(" ", "") == "Isitover?...Notyet."


def long_unpunctuated(n_chars: int = 20_000) -> str:
    words = ["missile", "budget", "treaty", "alliance", "deterrence", "arsenal", "summit"]
    text, i = "", 0
    while len(text) < n_chars:
        text += words[i % len(words)] + str(i) + " "
        i += 1
    return text[:n_chars].rstrip()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("limit", [3000, 200])
def test_sentences_long_run_without_punctuation_cut_at_whitespace(backend, limit):
    text = long_unpunctuated()
    assert len(text) > 19_990 and "." not in text
    sentences = SentenceSplitter(backend=backend, max_sentence_chars=limit).split(text)
    check_spans(text, sentences)
    assert len(sentences) >= len(text) // limit
    assert all(len(s.text) <= limit for s in sentences)
    # Cuts fall at whitespace: no word is broken in two.
    assert all((s.start == 0 or text[s.start - 1] == " ") and (s.end == len(text) or text[s.end] == " ")
               for s in sentences)
    # ... and not needlessly early: a piece ends within the last half of the allowed length.
    assert all(len(s.text) > limit // 2 for s in sentences[:-1])


def test_sentences_long_run_joined_by_no_break_spaces_cut_between_words():
    text = "\u00a0".join(f"word{i}" for i in range(400))
    sentences = SentenceSplitter(max_sentence_chars=300).split(text)
    check_spans(text, sentences)
    assert all(s.text.split("\u00a0")[-1].startswith("word") and not s.text.endswith("wor") for s in sentences)
    assert all((s.end == len(text) or text[s.end].isspace()) for s in sentences)


def test_sentences_long_run_without_whitespace_cut_hard():
    text = "x" * 1000
    sentences = SentenceSplitter(max_sentence_chars=300).split(text)
    check_spans(text, sentences)
    assert [len(s.text) for s in sentences] == [300, 300, 300, 100]


def test_sentences_max_sentence_chars_validated():
    with pytest.raises(ValidationError):
        SentenceSplitter(max_sentence_chars=10)
    with pytest.raises(ValidationError):
        SentenceSplitter(backend="nltk")


def test_sentences_split_sentences_uses_the_default_splitter():
    assert split_sentences(ABBREVIATIONS) == SentenceSplitter(backend="syntok").split(ABBREVIATIONS)
    assert SentenceSplitter().backend == "syntok"


def test_sentences_blingfire_known_splits():
    # The weaknesses of blingfire that keep syntok the default (benchmarks/results/sentence_splitters.md).
    # (After a first sentence: at the very start of a text blingfire keeps "Mr. Smith" together.)
    assert texts("It rained. Mr. Smith met Dr. Jones.", "blingfire") == ["It rained.", "Mr.", "Smith met Dr. Jones."]
    assert texts('He left. "Really?" she asked.', "blingfire") == ["He left.", '"Really?"', "she asked."]
    assert texts("It rained. Mr. Smith met Dr. Jones.") == ["It rained.", "Mr. Smith met Dr. Jones."]
    assert texts('He left. "Really?" she asked.') == ["He left.", '"Really?" she asked.']
