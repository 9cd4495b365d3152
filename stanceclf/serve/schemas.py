"""The HTTP API's request and response bodies (pydantic; they make the OpenAPI document).

Plain pydantic, no FastAPI: importing this module costs nothing beyond the library itself.
Field descriptions are the API reference that ``/openapi.json`` and ``/docs`` show.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from stanceclf.data.documents import unicode_problem
from stanceclf.data.schema import LabelSchema


def _usable_text(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or only whitespace")
    problem = unicode_problem(text)
    if problem:
        raise ValueError(f"text is {problem}")
    return text


UsableText = Annotated[str, AfterValidator(_usable_text)]


class ClassifyRequest(BaseModel):
    """Texts to classify: either ``text`` (one) or ``texts`` (several), not both."""

    # strict: "yes" is not a boolean and 3 is not a text; extra="forbid": a misspelt field is an error.
    model_config = ConfigDict(strict=True, extra="forbid")

    text: UsableText | None = Field(None, description="One text (an article, a paragraph or a sentence).",
                                    examples=["NATO will expand again. Moscow warned of a dangerous escalation."])
    texts: list[UsableText] | None = Field(None, min_length=1,
                                           description="Several texts, classified together; the response has "
                                                       "one list of predictions per text, in this order.")
    split_sentences: bool = Field(True, description="Split each text into sentences and classify each sentence "
                                                    "(true), or classify each text as one unit (false).")

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> "ClassifyRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)


class Prediction(BaseModel):
    """One classified unit: a sentence, or a whole text with ``split_sentences`` false."""

    model_config = ConfigDict(from_attributes=True)  # built from stanceclf.Prediction objects

    text: str = Field(description="The unit's text, exactly input[start:end].")
    start: int = Field(description="Offset of the unit's first character in its input text (Unicode code points).")
    end: int = Field(description="Offset just after the unit's last character in its input text.")
    labels: list[str] = Field(description="The labels whose calibrated score reaches the model's threshold for "
                                          "that label (often none).")
    scores: dict[str, float] = Field(description="A calibrated probability (0 to 1, 6 decimals) for every label "
                                                 "of the model's schema.")
    truncated: bool = Field(description="True when the unit was longer than the model's max_length tokens and "
                                        "only its beginning was scored.")


class ClassifyResponse(BaseModel):
    """The predictions of a classify request."""

    results: list[list[Prediction]] = Field(description="One list per input text, in request order (one list "
                                                        "for 'text'); each holds that text's units in order.")


class Limits(BaseModel):
    """The server's limits, fixed at start (see ``stanceclf serve --help``)."""

    max_body_bytes: int = Field(description="Largest request body accepted; larger gets HTTP 413.")
    max_text_chars: int = Field(description="Longest single text accepted, in characters; longer gets HTTP 413.")
    max_request_chars: int = Field(description="Most characters of all texts of one request together; more gets "
                                               "HTTP 413.")
    max_request_sentences: int = Field(description="Most units (sentences, or texts with split_sentences false) "
                                                   "of one request; more gets HTTP 413.")
    max_queue: int = Field(description="Requests that may wait for the model, large ones being scored in "
                                       "pieces included; beyond that HTTP 503 with Retry-After.")
    max_explain_sentences: int = Field(description="Most sentences of one explain request; more gets HTTP 413.")


class ModelInfo(BaseModel):
    """The model this server runs (fixed at start) and where it came from."""

    name: str = Field(description="The model directory's name.")
    labels: list[str] = Field(description="The labels, in the order of the schema.")
    thresholds: dict[str, float] = Field(description="Per label: the calibrated score at or above which the "
                                                     "label is given.")
    temperatures: dict[str, float] = Field(description="Per label: the temperature that calibrates raw logits "
                                                       "(score = sigmoid(logit / temperature)).")
    max_length: int = Field(description="Longest unit scored, in tokens; longer units are truncated.")
    label_schema: LabelSchema = Field(description="The label schema the model was trained on, with each "
                                                  "label's definition.")
    base_model: str = Field(description="The pretrained model it was fine-tuned from.")
    data_fingerprint: str | None = Field(description="Fingerprint of the training data (null if not recorded).")
    created: str = Field(description="When the model was saved (ISO 8601, UTC).")
    backend: str = Field(description="The forward pass in use: torch (fp32), bf16 or onnx.")
    library_versions: dict[str, str] = Field(description="Versions of the libraries that trained the model "
                                                         "(from its manifest).")
    serving_versions: dict[str, str] = Field(description="Versions of the same libraries in this server.")
    metrics: dict = Field(description="Evaluation metrics recorded in the model's manifest.")
    limits: Limits = Field(description="This server's request limits.")


class Stats(BaseModel):
    """Counters since this server process started (one process: with --workers N each has its own)."""

    requests: int = Field(0, description="Classify requests accepted into the queue.")
    rejected_busy: int = Field(0, description="Classify requests refused with 503 because the queue was full.")
    abandoned: int = Field(0, description="Accepted requests whose client disconnected before they were fully "
                                          "scored; what was left of them was never scored.")
    batches: int = Field(0, description="Calls to the model: each scores the sentences of small requests "
                                        "batched together, or one forward pass of a large request (more "
                                        "sentences than --batch-size).")
    texts: int = Field(0, description="Texts of the requests fully scored.")
    units: int = Field(0, description="Units (sentences, or texts with split_sentences false) scored.")
    queued: int = Field(0, description="Requests waiting for the model right now.")
    in_progress: int = Field(0, description="Large requests (more sentences than --batch-size) being scored in "
                                            "pieces right now.")


class ExplainRequest(BaseModel):
    """One text whose sentences' labels are to be explained word by word."""

    model_config = ConfigDict(strict=True, extra="forbid")

    text: UsableText = Field(description="The text (split into sentences unless split_sentences is false).",
                             examples=["Russia will probably launch a new offensive, which threatens Europe."])
    label: str | None = Field(None, description="Explain this label on every sentence, flagged or not; by "
                                                "default each sentence's flagged labels.")
    method: Literal["occlusion", "integrated_gradients"] = Field(
        "occlusion", description="occlusion: each word's weight is how far the score falls without it, on "
                                 "the forward pass this server runs; integrated_gradients: gradients along a "
                                 "path from padding (on fp32 when the server runs ONNX; see 'note').")
    split_sentences: bool = Field(True, description="Split the text into sentences (true) or explain it as one "
                                                    "unit (false).")


class WordWeight(BaseModel):
    text: str = Field(description="The word.")
    start: int = Field(description="Its offset into the request's text.")
    end: int = Field(description="Its end offset (exclusive).")
    weight: float = Field(description="How much it pushed the label's calibrated score (positive: up).")


class LabelExplanation(BaseModel):
    label: str
    score: float = Field(description="The label's calibrated score for the sentence.")
    threshold: float = Field(description="The label's threshold.")
    flagged: bool = Field(description="Whether the sentence gets the label.")
    words: list[WordWeight] = Field(description="Every word of the sentence, in order, with its weight.")


class ExplainedSentence(BaseModel):
    text: str
    start: int
    end: int
    labels: list[str]
    scores: dict[str, float]
    explanations: dict[str, LabelExplanation] = Field(description="Per explained label.")
    method: str
    backend: str = Field(description="The forward pass that computed the weights.")
    note: str | None = Field(None, description="Set when the weights were not computed on the forward pass "
                                               "this server runs, and why.")


class ExplainResponse(BaseModel):
    sentences: list[ExplainedSentence]


class Status(BaseModel):
    status: str = Field(description="'ok' (alive), 'ready' (model loaded), or 'loading'.")
    detail: str | None = Field(None, description="Why the server is not ready, when it is not.")


class FieldProblem(BaseModel):
    field: str = Field(description="The request field at fault, dotted ('texts.2'); '(body)' for the whole body.")
    message: str = Field(description="What is wrong with it.")


class ErrorResponse(BaseModel):
    """Every error response (401, 404, 405, 413, 422, 500, 503) has this shape."""

    code: str = Field(description="Stable error code, e.g. E051 (bad request), E052 (too large), E053 (busy), "
                                  "E054 (internal error), E055 (no or wrong API key), E056 (no such path), E057 "
                                  "(method not allowed).")
    message: str = Field(description="What went wrong, for people.")
    problems: list[FieldProblem] = Field(default_factory=list, description="One entry per field at fault (none "
                                                                           "when the whole request is).")
