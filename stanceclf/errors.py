"""Numbered, actionable errors.

Every error the library raises on bad input carries a stable code (``E0xx``) so
that users can search for it, and names the file, line, record or document
that is wrong, in the spirit of spaCy's error catalogue.
"""

from __future__ import annotations

from pathlib import Path


class StanceclfError(Exception):
    """Base class of every error raised on bad input or bad configuration."""

    code = "E000"

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        self.detail = message
        prefix = f"[{self.code}] "
        location = f"{where}: " if where else ""
        super().__init__(prefix + location + message)


class SchemaError(StanceclfError):
    """A label schema file is malformed."""

    code = "E001"


class AnnotationError(StanceclfError):
    """An annotation record is malformed or does not fit its document."""

    code = "E002"


class ChecksumMismatchError(AnnotationError):
    """The document text on disk is not the text the annotations were made on."""

    code = "E003"


class UnknownLabelError(AnnotationError):
    """A span carries a label that is neither in the schema nor in the label mapping."""

    code = "E004"


class OffsetError(AnnotationError):
    """A span's offsets are out of range, reversed, or do not match the text."""

    code = "E005"


class InputFileError(StanceclfError):
    """A file cannot be read: missing, a folder, or not UTF-8."""

    code = "E006"


class RecipeError(StanceclfError):
    """A training recipe is invalid; raised before any work starts."""

    code = "E010"


class ModelDirectoryError(StanceclfError):
    """A model directory is missing files, has a bad manifest, or was made by a newer format."""

    code = "E020"


class BaseModelError(StanceclfError):
    """The base model cannot be found or its weights fail the integrity check."""

    code = "E021"


class BackendError(StanceclfError):
    """An unknown inference backend was asked for."""

    code = "E022"


class InputRecordError(StanceclfError):
    """A record of a corpus to score is unusable (empty, missing field, not UTF-8, too long)."""

    code = "E030"


class ScoringSetupError(StanceclfError):
    """A scoring run cannot start: an input is missing, or an option or the output path is unusable."""

    code = "E031"


class RayEngineError(StanceclfError):
    """The Ray scoring engine cannot run: Ray is not installed, the cluster cannot be reached, or the
    cluster returned rows that do not add up."""

    code = "E032"


class EvaluationError(StanceclfError):
    """An evaluation would be meaningless: an empty split, or documents the model was trained on."""

    code = "E040"


class ServeSetupError(StanceclfError):
    """The HTTP server cannot start: FastAPI/uvicorn missing, or an option is unusable."""

    code = "E050"


class BadRequestError(StanceclfError):
    """An HTTP request is malformed: not JSON, a field of the wrong type, an empty text (HTTP 422)."""

    code = "E051"


class RequestTooLargeError(StanceclfError):
    """An HTTP request body or one of its texts is over the server's limit (HTTP 413)."""

    code = "E052"


class ServerBusyError(StanceclfError):
    """The server cannot take the request now: its queue is full or its model is not loaded yet (HTTP 503)."""

    code = "E053"


class InternalServerError(StanceclfError):
    """The server failed while scoring a request, not because of the request (HTTP 500; the traceback is in
    the server's log)."""

    code = "E054"


class LanguageWarning(UserWarning):
    """Input that does not look like English, the language the models were trained on."""


def describe_validation_error(exc) -> str:
    """A pydantic ``ValidationError`` as one line naming each bad field."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"field '{field}': {err['msg']}")
    return "; ".join(parts)


def describe_json_error(exc) -> str:
    """A ``json.JSONDecodeError`` in full: its ``msg`` alone ends mid-sentence ("Invalid control character at")."""
    return f"{exc.msg.removesuffix(' at')} at line {exc.lineno}, column {exc.colno}"


def load_json_object(path: str | Path, error: type[StanceclfError], what: str) -> dict:
    """Read a JSON object from a file, turning a missing file, bad bytes, bad syntax or another JSON
    type into ``error`` naming the file (and the line and column of a syntax error)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{what} file not found", where=str(path)) from None
    except OSError as exc:
        raise error(f"{what} file cannot be read: {exc.strerror}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} file is not valid UTF-8 (byte {exc.start})", where=str(path)) from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} file is not valid JSON: {describe_json_error(exc)}", where=str(path)) from None
    if not isinstance(data, dict):
        raise error(f"{what} file must be a JSON object, not {type(data).__name__}", where=str(path))
    return data


def load_toml(path: str | Path, error: type[StanceclfError], what: str) -> dict:
    """Read a TOML file, turning a missing file or bad syntax into ``error`` naming the file."""
    import tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} file not found", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"not valid TOML: {exc}", where=str(path)) from None


class BuildOptionError(StanceclfError):
    """An option of a dataset build is unusable: an unknown annotation format or export, split ratios that do
    not add up, an unknown split name (``build-dataset``'s options; a recipe's ``[data]`` gives E010)."""

    code = "E007"


class TextInputError(StanceclfError, ValueError):
    """A text given to ``classify`` cannot be scored (an unpaired surrogate: not valid Unicode). Also a
    ``ValueError``, which the Python API raised before it had a code."""

    code = "E033"


def parse_json_text(text: str, error: type[StanceclfError], where: str) -> object:
    """``json.loads`` with every way it can fail as ``error`` naming ``where``: bad syntax (with its line and
    column), an integer longer than Python converts (4,300 digits), nesting deeper than the parser recurses."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON: {describe_json_error(exc)}", where=where) from None
    except RecursionError:
        raise error("not usable JSON: nested too deeply", where=where) from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise error("not usable JSON: an integer has more digits than Python reads (4,300)", where=where) from None


class ResumeError(StanceclfError):
    """An interrupted run cannot be resumed: its progress file is unreadable, or it was left by a run with
    other inputs, another model or backend, or other options (the message says which)."""

    code = "E034"


class ApiKeyError(StanceclfError):
    """An HTTP request to a server started with an API key lacks that key or gives a wrong one (HTTP 401)."""

    code = "E055"


class NotFoundError(StanceclfError):
    """An HTTP request names a path the API does not have (HTTP 404)."""

    code = "E056"


class MethodNotAllowedError(StanceclfError):
    """An HTTP request uses a method its path does not take, e.g. GET /v1/classify (HTTP 405)."""

    code = "E057"


def shown(value, limit: int = 60) -> str:
    """A value read from an input as an error message shows it: its repr (unpaired surrogates escaped, so the
    message can be printed), cut to ``limit`` characters (a whole nested list would drown the message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ExplainError(StanceclfError):
    """An explanation cannot be made as asked: an unknown method or label, or a model whose embeddings or
    tokenizer offsets integrated gradients cannot reach (occlusion works on every model)."""

    code = "E035"


class ReportInputError(StanceclfError):
    """``stanceclf report`` cannot use its input: a scores file that is not the output of ``stanceclf score``
    (a missing column, a bad row, a document's rows not together), metadata that does not fit, or a model
    whose labels differ from the scores' (the message names the file and line or row)."""

    code = "E036"
