"""The report of a scored corpus: counts that match the rows, every format and row kind, metadata joined by
document id, bounded memory, and the page itself in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO
from stanceclf.cli import app
from stanceclf.errors import ReportInputError
from stanceclf.infer.corpus_summary import Kept, summarize_scores
from stanceclf.infer.model import StanceModel
from stanceclf.infer.report import write_report
from stanceclf.infer.scoring import score_corpus

runner = CliRunner()
SEEDS = REPO / "examples" / "seeds"
DOMAINS = ("news.example", "blog.example")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def flagging_model(make_tiny_model, tmp_path):
    """A tiny model whose thresholds sit inside its scores' range, so that some sentences are flagged and some
    are not (a random model's scores hardly move: thresholds at their median)."""
    model = make_tiny_model()
    texts = [path.read_text(encoding="utf-8") for path in sorted(SEEDS.glob("*.txt"))]
    probs = model.predict_proba([p.text for text in texts for p in model.classify(text)])
    thresholds = {label: float(np.round(np.median(probs[:, j]), 6)) for j, label in enumerate(model.labels)}
    return StanceModel.from_pretrained(make_tiny_model(thresholds=thresholds).save_pretrained(tmp_path / "flagging"))


@pytest.fixture
def seed_corpus(tmp_path) -> Path:
    """The seed articles as a JSONL corpus with a domain and a date per article; the last one has neither."""
    records = []
    for i, path in enumerate(sorted(SEEDS.glob("*.txt"))):
        record = {"id": path.stem, "domain": DOMAINS[i % 2], "date": f"2022-0{i + 1}-15",
                  "text": path.read_text(encoding="utf-8")}
        records.append(record if i < 4 else {"id": path.stem, "text": record["text"]})
    return write_jsonl(tmp_path / "seeds.jsonl", records)


@pytest.fixture
def seed_scores(tmp_path, seed_corpus, flagging_model) -> Path:
    out = tmp_path / "scores.jsonl"
    score_corpus([seed_corpus], out, flagging_model, progress=False)
    return out


def _expected_counts(rows: list[dict], labels: list[str]):
    hits = np.array([[label in row["labels"] for label in labels] for row in rows])
    documents = {}
    for row, hit in zip(rows, hits):
        documents[row["doc_id"]] = documents.get(row["doc_id"], 0) + hit
    flagged_documents = np.array([d > 0 for d in documents.values()])
    return hits, flagged_documents


# ---- counts -------------------------------------------------------------------------------------------------
def test_report_counts_match_the_rows(seed_scores, flagging_model):
    rows = read_jsonl(seed_scores)
    labels = flagging_model.labels
    summary = summarize_scores(seed_scores, flagging_model.thresholds)
    hits, flagged_documents = _expected_counts(rows, labels)
    assert 0 < hits.sum() < hits.size, "some sentences flagged, some not"
    assert summary.totals.sentences == len(rows) and summary.totals.documents == 5
    assert summary.totals.label_sentences.tolist() == hits.sum(axis=0).tolist()
    assert summary.totals.label_documents.tolist() == flagged_documents.sum(axis=0).tolist()
    assert summary.cooccurrence_sentences.tolist() == (hits.T.astype(int) @ hits.astype(int)).tolist()
    scores = np.array([[row[f"score_{label}"] for label in labels] for row in rows])
    assert summary.histograms.sum(axis=1).tolist() == [len(rows)] * 3
    assert summary.histograms[0].tolist() == np.histogram(scores[:, 0], bins=summary.histograms.shape[1],
                                                          range=(0, 1))[0].tolist()
    assert summary.disagreeing_rows == 0


def test_report_keeps_the_most_confident_and_the_most_borderline(seed_scores, flagging_model):
    rows = read_jsonl(seed_scores)
    summary = summarize_scores(seed_scores, flagging_model.thresholds, examples=4)
    label = flagging_model.labels[1]
    threshold = flagging_model.thresholds[label]
    column = f"score_{label}"
    confident = sorted((r for r in rows if label in r["labels"]), key=lambda r: -r[column])[:4]
    borderline = sorted(rows, key=lambda r: abs(r[column] - threshold))[:4]
    kept = summary.examples[label]
    assert [e.sentence.text for e in kept["confident"].items()] == [r["text"] for r in confident]
    assert sorted(e.sentence.text for e in kept["borderline"].items()) == sorted(r["text"] for r in borderline)
    sample = kept["sample"].items()
    assert len(sample) == 4 and all(label in e.sentence.labels for e in sample)
    for example in kept["confident"].items():  # the whole document comes with a kept sentence
        document = example.document
        assert [s.index for s in document.sentences] == list(range(document.total))
        assert document.sentences[example.sentence.index] is example.sentence


def test_report_kept_is_a_bounded_top_k():
    kept = Kept(3)
    for priority in [5, 1, 9, 7, 3, 8]:
        kept.offer(priority, f"item {priority}")
    assert kept.items() == ["item 9", "item 8", "item 7"] and kept.floor == 7


def test_report_every_format_and_per_document_rows_agree(tmp_path, seed_corpus, flagging_model):
    thresholds = flagging_model.thresholds
    summaries = {}
    for name, options in (("o.jsonl", {}), ("o.csv", {}), ("o.parquet", {}), ("d.jsonl", {"per_document": True}),
                          ("d.parquet", {"per_document": True})):
        score_corpus([seed_corpus], tmp_path / name, flagging_model, progress=False, **options)
        summaries[name] = summarize_scores(tmp_path / name, thresholds, by=["domain"], metadata=[seed_corpus])
    reference = summaries["o.jsonl"]
    for name, summary in summaries.items():
        assert summary.layout.per_document == name.startswith("d.")
        for attribute in ("documents", "sentences", "label_sentences", "label_documents"):
            assert np.array_equal(getattr(summary.totals, attribute), getattr(reference.totals, attribute)), name
        assert np.array_equal(summary.cooccurrence_documents, reference.cooccurrence_documents), name
        assert {k: v.sentences for k, v in summary.groups["domain"].items()} == \
            {k: v.sentences for k, v in reference.groups["domain"].items()}, name
    for name in ("o.csv", "o.parquet"):
        assert np.array_equal(summaries[name].histograms, reference.histograms)
        assert np.array_equal(summaries[name].cooccurrence_sentences, reference.cooccurrence_sentences)


# ---- metadata --------------------------------------------------------------------------------------------
def test_report_joins_metadata_by_document_id(seed_scores, seed_corpus, flagging_model):
    rows = read_jsonl(seed_scores)
    records = {r["id"]: r for r in read_jsonl(seed_corpus)}
    summary = summarize_scores(seed_scores, flagging_model.thresholds, by=["domain"], date_field="date",
                               metadata=[seed_corpus])
    expected: dict[str, int] = {}
    for row in rows:
        domain = records[row["doc_id"]].get("domain", "(none)")
        expected[domain] = expected.get(domain, 0) + 1
    assert {k: v.sentences for k, v in summary.groups["domain"].items()} == expected
    assert sorted(summary.days) == sorted(np.datetime64(r["date"]).astype(object).toordinal()
                                          for r in records.values() if "date" in r)
    assert summary.undated_documents == 1 and summary.documents_without_metadata == 0


def test_report_metadata_ids_follow_score_without_an_id_field(tmp_path, flagging_model):
    """Records without ids are FILE:LINE to score, and so to the join."""
    corpus = write_jsonl(tmp_path / "noids.jsonl", [{"outlet": "A", "text": "NATO will expand. Talks resumed."},
                                                    {"outlet": "B", "text": "Moscow warned of escalation."}])
    score_corpus([corpus], tmp_path / "s.csv", flagging_model, progress=False)
    summary = summarize_scores(tmp_path / "s.csv", flagging_model.thresholds, by=["outlet"], metadata=[corpus])
    assert {k: v.sentences for k, v in summary.groups["outlet"].items()} == {"A": 2, "B": 1}


def test_report_metadata_from_a_parquet_input_reads_ids_as_score_does(tmp_path, flagging_model):
    """A Parquet input: ids by score's rule (an integer id is its decimal string, a missing one FILE:row),
    only the id and metadata columns read."""
    import pandas as pd

    corpus = tmp_path / "news.parquet"
    pd.DataFrame({"id": [7, None], "outlet": ["A", "B"],
                  "text": ["NATO will expand. Talks resumed.", "Moscow warned of escalation."]}).astype(
        {"id": "Int64"}).to_parquet(corpus)
    score_corpus([corpus], tmp_path / "s.jsonl", flagging_model, progress=False)
    assert {row["doc_id"] for row in read_jsonl(tmp_path / "s.jsonl")} == {"7", "news:1"}
    summary = summarize_scores(tmp_path / "s.jsonl", flagging_model.thresholds, by=["outlet"], metadata=[corpus])
    assert {k: v.sentences for k, v in summary.groups["outlet"].items()} == {"A": 2, "B": 1}
    assert summary.documents_without_metadata == 0


def test_report_needs_metadata_for_by(seed_scores, flagging_model):
    with pytest.raises(ReportInputError, match=r"\[E036\].*no column 'domain'.*--metadata"):
        summarize_scores(seed_scores, flagging_model.thresholds, by=["domain"])
    # The date field is optional: without metadata, no time section.
    assert summarize_scores(seed_scores, flagging_model.thresholds, date_field="date").date_field is None


# ---- bad input -----------------------------------------------------------------------------------------
def test_report_refuses_rows_it_cannot_read(tmp_path, seed_scores, flagging_model):
    rows = read_jsonl(seed_scores)
    thresholds = flagging_model.thresholds

    def refused(name, changed, message):
        path = write_jsonl(tmp_path / name, changed)
        with pytest.raises(ReportInputError, match=message):
            summarize_scores(path, thresholds)

    refused("shuffled.jsonl", [rows[1], rows[0], *rows[2:]], r"shuffled.jsonl:1: document .* starts at sentence 1")
    bad = [dict(r) for r in rows]
    bad[7]["score_prediction"] = 1.5
    refused("score.jsonl", bad, r"score.jsonl:8: score_prediction is 1.5, not a score")
    bad = [dict(r) for r in rows]
    bad[3]["labels"] = ["unknown"]
    refused("labels.jsonl", bad, r"labels.jsonl:4: labels is \['unknown'\]")
    refused("columns.jsonl", [{k: v for k, v in r.items() if k != "text"} for r in rows], r"not the output of")
    with pytest.raises(ReportInputError, match=r"labels \['prediction', 'threat_framing', 'policy_attribution'\]"):
        summarize_scores(seed_scores, {"a": 0.5})
    with pytest.raises(ReportInputError, match=r"\[E036\].*\.txt: cannot tell the format"):
        summarize_scores(next(SEEDS.glob("*.txt")), thresholds)


# ---- bounded memory --------------------------------------------------------------------------------------
def _synthetic_scores(path: Path, documents: int, rng) -> Path:
    """Sentence rows as score writes them: 20 per document, random scores."""
    labels = ("prediction", "threat_framing", "policy_attribution")
    with open(path, "w", encoding="utf-8") as handle:
        for d in range(documents):
            scores = np.round(rng.random((20, 3)), 6)
            for i, row in enumerate(scores):
                record = {"doc_id": f"doc{d}", "sentence_index": i, "start": 0, "end": 50,
                          "text": f"Sentence {i} of document {d}, padded to a realistic length of text.",
                          "labels": [label for label, s in zip(labels, row) if s >= 0.5],
                          **{f"score_{label}": float(s) for label, s in zip(labels, row)}}
                handle.write(json.dumps(record) + "\n")
    return path


def test_report_memory_does_not_grow_with_the_corpus(tmp_path):
    rng = np.random.default_rng(0)
    thresholds = {"prediction": 0.5, "threat_framing": 0.5, "policy_attribution": 0.5}
    peaks = {}
    for documents in (500, 4000):
        path = _synthetic_scores(tmp_path / f"{documents}.jsonl", documents, rng)
        tracemalloc.start()
        summary = summarize_scores(path, thresholds)
        peaks[documents] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary.totals.sentences == 20 * documents
        kept = {id(e.document) for lists in summary.examples.values() for k in lists.values() for e in k.items()}
        assert len(kept) <= 3 * 3 * 5
    assert peaks[4000] < 1.5 * peaks[500], peaks  # eight times the rows, not eight times the memory


# ---- the page ---------------------------------------------------------------------------------------------
def test_report_page_shows_counts_plots_explanations_and_links(tmp_path, seed_scores, seed_corpus, flagging_model):
    out = tmp_path / "report.html"
    result = write_report(seed_scores, out, model=flagging_model, by=["domain"], metadata=[seed_corpus])
    page = out.read_text(encoding="utf-8")
    assert result.bytes == len(page.encode("utf-8")) and result.sentences == len(read_jsonl(seed_scores))
    assert len(re.findall(r'<img class="plot" alt="[^"]*" src="data:image/png;base64,', page)) == 5
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page), "nothing is fetched"
    targets = set(re.findall(r'id="(doc-[\d-]+(?:s-\d+)?)"', page))
    links = set(re.findall(r'href="#(doc-[^"]+)"', page))
    assert links and links <= targets, links - targets
    assert page.count('class="xp"') >= 3 * 3, "each label's kept sentences are explained"
    assert "By domain" in page and "Over time" in page and "news.example" in page
    hits = np.array([[label in r["labels"] for label in flagging_model.labels] for r in read_jsonl(seed_scores)])
    assert f"<td>{hits[:, 0].sum():,}</td>" in page

    write_report(seed_scores, out, model=flagging_model.path, with_explanations=False)
    plain = out.read_text(encoding="utf-8")
    assert 'class="xp"' not in plain and "By domain" not in plain and "Over time" not in plain


def test_report_warns_when_the_thresholds_disagree_with_the_labels(tmp_path, seed_scores, make_tiny_model):
    other = make_tiny_model().save_pretrained(tmp_path / "other")  # thresholds 0.5: not the scoring model's
    result = write_report(seed_scores, tmp_path / "r.html", model=other, with_explanations=False)
    assert result.warnings and "scored with another model" in result.warnings[0]
    assert "scored with another model" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_report_cli(tmp_path, seed_scores, seed_corpus, flagging_model):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(seed_scores), "--out", str(out), "--model", str(flagging_model.path),
                                 "--by", "domain", "--metadata", str(seed_corpus), "--no-explain"])
    assert result.exit_code == 0, result.output
    assert "5 documents" in result.output and out.is_file()
    refused = runner.invoke(app, ["report", str(seed_scores), "--out", str(tmp_path / "x.html"), "--model",
                                  str(flagging_model.path), "--by", "domain"])
    assert refused.exit_code == 1 and "[E036]" in refused.output and not (tmp_path / "x.html").exists()


# ---- in a real browser ------------------------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def browser():
    """Debian's Chromium, driven by selenium through Debian's chromedriver (nothing is downloaded)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Chromium is absent: apt-get install chromium chromium-driver (setup.sh test does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is absent: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    profile = tempfile.mkdtemp(prefix="stanceclf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_of_the_seed_articles_in_a_real_browser(tmp_path, seed_scores, seed_corpus, flagging_model, browser):
    out = tmp_path / "seeds.html"
    write_report(seed_scores, out, model=flagging_model, by=["domain"], metadata=[seed_corpus])
    browser.get(out.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    plots = browser.execute_script("return [...document.querySelectorAll('img.plot')].map("
                                   "i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
    assert len(plots) == 5 and all(done and natural > 100 and shown > 100 for done, natural, shown in plots), plots
    # A document's link leads to its sentences.
    link = browser.find_element("css selector", "#documents table a")
    target = link.get_attribute("href").split("#")[1]
    link.click()
    assert browser.execute_script("return location.hash") == f"#{target}"
    assert browser.execute_script(f"return document.getElementById('{target}').querySelectorAll('li').length") > 0
    highlighted = browser.execute_script("return document.querySelectorAll('.xp .w').length")
    assert highlighted > 0
