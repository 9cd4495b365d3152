"""The English-only note: non-English documents get scores and one warning per process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from stanceclf.data import language
from stanceclf.errors import LanguageWarning

GERMAN = ("Die Bundesregierung hat am Montag angekündigt, dass die Steuern im kommenden Jahr erhöht werden sollen. "
          "Kritiker warnen vor einer gefährlichen Eskalation der Lage an der Grenze und fordern neue Gespräche.")
FRENCH = ("Le gouvernement a annoncé lundi que les impôts augmenteront l'année prochaine. Les critiques mettent "
          "en garde contre une dangereuse escalade de la situation à la frontière et demandent de nouvelles "
          "discussions.")
SEEDS = sorted((Path(__file__).resolve().parents[1] / "examples" / "seeds").glob("*.txt"))


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a process that has not warned yet."""
    monkeypatch.setattr(language, "_warned", threading.Event())


def test_language_english_news_passes_and_other_languages_do_not():
    assert not any(language.looks_non_english(seed.read_text(encoding="utf-8")) for seed in SEEDS)
    assert language.looks_non_english(GERMAN) and language.looks_non_english(FRENCH)
    assert not language.looks_non_english("Die Regierung warnt."), "too few words to judge"
    assert not language.looks_non_english("Trump Vows Tariffs\nMarkets Tumble On Rate Fears\nNATO Summit Opens "
                                          "In Vilnius\nChina Warns US Over Taiwan Arms Sale\nOil Prices Surge\n"
                                          "Election Results Delayed In The Capital")


def test_language_classify_warns_once_per_process_and_still_scores(make_tiny_model):
    model = make_tiny_model()
    with pytest.warns(LanguageWarning, match="input 1 does not look like English") as caught:
        results = model.classify(["NATO will expand again.", GERMAN, FRENCH])
        model.classify(FRENCH)
    assert len([w for w in caught if issubclass(w.category, LanguageWarning)]) == 1
    assert len(results[1]) == 2, "non-English text is still scored"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LanguageWarning)
        model.classify([seed.read_text(encoding="utf-8") for seed in SEEDS])


def test_language_scoring_warns_once_naming_the_document(tmp_path, make_tiny_model):
    from stanceclf.infer.scoring import score_corpus

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"de{i}", "text": GERMAN}) + "\n" for i in range(3)), encoding="utf-8")
    with pytest.warns(LanguageWarning, match=r"document 'de0' \(.*in.jsonl:1\)") as caught:
        summary = score_corpus([source], tmp_path / "out.jsonl", make_tiny_model(), progress=False)
    assert summary.documents == 3
    assert len([w for w in caught if issubclass(w.category, LanguageWarning)]) == 1


def test_language_cli_prints_one_plain_warning_line(tmp_path, tiny_model_dir):
    for name, text in (("a.txt", GERMAN), ("b.txt", FRENCH)):
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "stanceclf.cli", "classify", str(tmp_path / "a.txt"),
                             str(tmp_path / "b.txt"), "--model", str(tiny_model_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "English" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: input 0 does not look like English"), result.stderr
