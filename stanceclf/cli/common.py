"""What every verb shares: the failure path and the options that pick a model's backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from stanceclf.infer.model import StanceModel


def fail(error: Exception) -> NoReturn:
    typer.secho(str(error), fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _backend_help() -> str:
    from stanceclf.infer.backends import backend_help

    return "Forward pass: " + backend_help() + "."


BACKEND_OPTION = typer.Option("torch", help=_backend_help())
FAST_OPTION = typer.Option(False, help="Shorthand for --backend auto.")
PROGRESS_OPTION = typer.Option(True, help="Show progress: a bar on a terminal, a line a minute in a log file "
                               "(none for a run shorter than that).")


def load_model(model: Path | None, backend: str, fast: bool) -> StanceModel:
    """The model a verb runs: a directory or a shipped model's name (default: the shipped default), on the
    chosen backend."""
    from stanceclf.infer.predict import load

    return load(model, fast="auto" if fast else backend)


def parse_pairs(items: list[str], what: str, example: str, *, error=None, where: str | None = None
                ) -> dict[str, str]:
    """``KEY=VALUE`` items (repeatable options) as a dict, or a clear ``error`` (a coded error class;
    by default :class:`~stanceclf.errors.StanceclfError`) naming the option ``where``."""
    from stanceclf.errors import StanceclfError

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise (error or StanceclfError)(f"{what} {item!r} must look like {example}", where=where)
        pairs[key] = value
    return pairs
