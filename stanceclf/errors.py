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
