"""stanceclf: tag sentences of news and opinion articles with claim types.

    >>> from stanceclf import classify
    >>> for sentence in classify("NATO will expand again. The summit opened on Monday."):
    ...     print(sentence.labels, sentence.text)
"""

from stanceclf.data.dataset import BuildConfig, build_dataset
from stanceclf.data.documents import AnnotatedDocument, Document, Span
from stanceclf.errors import StanceclfError
from stanceclf.model.manifest import ModelManifest
from stanceclf.infer.results import Prediction
from stanceclf.infer.model import StanceModel
from stanceclf.infer.explain import explain
from stanceclf.infer.predict import classify, default_model_path, load, to_dataframe, to_records
from stanceclf.data.readers import read_annotations
from stanceclf.train.recipe import Recipe, load_recipe
from stanceclf.data.schema import LabelSchema, load_schema
from stanceclf.data.sentences import SentenceSpan, SentenceSplitter, split_sentences

__version__ = "0.1.0"

__all__ = [
    "AnnotatedDocument", "BuildConfig", "Document", "LabelSchema", "ModelManifest", "Prediction", "Recipe",
    "SentenceSpan", "SentenceSplitter", "Span", "StanceModel", "StanceclfError", "build_dataset", "classify",
    "default_model_path", "explain", "load", "load_recipe", "load_schema", "read_annotations", "split_sentences",
    "to_dataframe", "to_records",
]
