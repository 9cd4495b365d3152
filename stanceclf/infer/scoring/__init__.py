"""Scoring corpora: input readers per format, output writers per format, the resume state,
and the job that ties them together (:func:`score_corpus`)."""

from stanceclf.infer.scoring.job import ScoreOptions, ScoreSummary, score_corpus
from stanceclf.infer.scoring.state import PARTIAL_SUFFIX, PROGRESS_SUFFIX

__all__ = ["PARTIAL_SUFFIX", "PROGRESS_SUFFIX", "ScoreOptions", "ScoreSummary", "score_corpus"]
