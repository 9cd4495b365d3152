"""The ``stanceclf`` command line: small verbs, one per stage of the pipeline.

Each verb is a thin call into the library (parse options, call, print); the verbs live
beside the stage they drive: :mod:`.data_verbs`, :mod:`.train_verbs`, :mod:`.infer_verbs`,
:mod:`.serve_verbs` (the HTTP API), and :mod:`.annotate_verbs` for the annotation loop with Label Studio.
"""

from __future__ import annotations

import os
import warnings

import typer

from stanceclf.cli import annotate_verbs, data_verbs, infer_verbs, report_verbs, serve_verbs, train_verbs

# rich_markup_mode=None: help texts are shown as written ("[[start, end, label]]" is not markup).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Tag sentences of news and opinion articles with claim types.")
app.command("build-dataset")(data_verbs.build_dataset_command)
app.command()(train_verbs.train)
app.command()(train_verbs.evaluate)
app.command("cross-validate")(train_verbs.cross_validate)
app.command("learning-curve")(train_verbs.learning_curve)
app.command()(infer_verbs.classify)
app.command()(infer_verbs.score)
app.command()(report_verbs.explain)
app.command()(report_verbs.report)
app.command()(serve_verbs.serve)
app.command()(annotate_verbs.suggest)
app.command("labelstudio-config")(annotate_verbs.labelstudio_config)
app.command()(train_verbs.export)
app.command()(train_verbs.info)
app.command()(data_verbs.agreement)
app.add_typer(data_verbs.sheets_app, name="sheets")
app.add_typer(data_verbs.adjudicate_app, name="adjudicate")


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = _show_warning
    app()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's own warnings as one plain line on stderr (no source file and line: not a bug report)."""
    from stanceclf.errors import LanguageWarning

    if issubclass(category, LanguageWarning):
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning
