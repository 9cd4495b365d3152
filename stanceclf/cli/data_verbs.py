"""Verbs of the data stage: build-dataset, agreement, sheets, adjudicate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from stanceclf.cli.common import fail, parse_pairs
from stanceclf.errors import BuildOptionError, StanceclfError

sheets_app = typer.Typer(no_args_is_help=True, help="Sentence sheets for annotating whole articles by hand.")
adjudicate_app = typer.Typer(no_args_is_help=True, help="A third reader decides where two annotations differ: "
                             "blind sheets of the disputed sentences, then the adjudicated annotation.")


def _formats_help() -> str:
    from stanceclf.data.readers import FORMATS

    return "Annotation format: " + "; ".join(f"'{name}' = {text}" for name, text in FORMATS.items())


#: The build-dataset option that sets each field of AnnotationSource and BuildConfig (for error messages).
_OPTION_OF_FIELD = {"format": "--format", "inputs": "INPUTS", "label_map": "--map", "reader_options": "--reader-option",
                    "split_ratios": "--split", "seed": "--seed", "min_overlap_chars": "--min-overlap"}


def _parse_ratios(value: str) -> dict[str, float]:
    pairs = parse_pairs(value.split(","), "split ratio", "train=0.7,dev=0.15,test=0.15", error=BuildOptionError,
                        where="--split")
    try:
        return {name.strip(): float(number) for name, number in pairs.items()}
    except ValueError:
        raise BuildOptionError(f"split ratios must look like train=0.7,dev=0.15,test=0.15, got {value!r}",
                               where="--split") from None


def _validated(model, **values):
    """``model(**values)``, a bad value becoming a :class:`BuildOptionError` naming the option that set it."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "reader_options"  # the one check across fields
        message = str(first["ctx"]["error"]) if "error" in first.get("ctx", {}) else first["msg"]
        raise BuildOptionError(message, where=_OPTION_OF_FIELD.get(field, field)) from None


def _source_and_config(recipe, inputs, fmt, schema, label_map, split, seed, min_overlap, lenient, reader_option):
    """``(schema, AnnotationSource, BuildConfig, resolve)`` from a recipe, or from the options (unset ones
    take :class:`~stanceclf.data.dataset.BuildConfig`'s defaults)."""
    from stanceclf.data.dataset import AnnotationSource, BuildConfig
    from stanceclf.data.schema import load_schema
    from stanceclf.train.recipe import load_recipe

    if recipe is not None:
        if inputs:
            raise BuildOptionError("give annotation inputs or --recipe, not both: the recipe names its inputs")
        loaded = load_recipe(recipe)
        if loaded.data.dataset is not None:
            raise BuildOptionError("this recipe trains on a dataset that is already built", where=str(recipe))
        return load_schema(loaded.schema_path), loaded.data, loaded.data, loaded.resolve
    if not inputs:
        raise BuildOptionError("give annotation files or folders, or --recipe")
    mapping = {raw: (label or None) for raw, label in parse_pairs(
        label_map, "label mapping", "RAW=LABEL", error=BuildOptionError, where="--map").items()}
    options = parse_pairs(reader_option, "reader option", "KEY=VALUE", error=BuildOptionError, where="--reader-option")
    source = _validated(AnnotationSource, format=fmt, inputs=[str(p) for p in inputs], label_map=mapping,
                        strict=not lenient, reader_options=options)
    settings = {"split_ratios": _parse_ratios(split) if split else None, "seed": seed,
                "min_overlap_chars": min_overlap}
    config = _validated(BuildConfig, **{key: value for key, value in settings.items() if value is not None})
    return load_schema(schema), source, config, Path


def build_dataset_command(
    inputs: List[Path] = typer.Argument(None, help="Annotation files or folders (or use --recipe)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the dataset to."),
    recipe: Optional[Path] = typer.Option(None, help="Build exactly the dataset this training recipe trains on "
                                          "(its inputs, reader options, build settings and seed)."),
    fmt: str = typer.Option("native", "--format", "-f", help=_formats_help()),
    schema: str = typer.Option("claim-types", help="Schema name (shipped in labels/) or path to a schema TOML."),
    label_map: List[str] = typer.Option([], "--map", help="RAW=LABEL renames a label, RAW= drops it, *=LABEL maps "
                                        "every other label. Repeatable."),
    reader_option: List[str] = typer.Option([], "--reader-option", help="KEY=VALUE passed to the format's reader, "
                                            "e.g. text_field=body (label-studio, doccano) or text_root=DIR (native). "
                                            "Repeatable."),
    split: Optional[str] = typer.Option(None, help="Split ratios grouped by document, e.g. train=0.7,dev=0.15,"
                                        "test=0.15 (the default, as in the recipes)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the document split (default 13, as in the recipes)."),
    min_overlap: Optional[int] = typer.Option(None, help="Characters a span must share with a sentence to label "
                                              "it (default 1)."),
    export: str = typer.Option("jsonl", help="Exports besides the Arrow dataset: jsonl, parquet, both "
                               "comma-separated, or none."),
    lenient: bool = typer.Option(False, help="Skip bad items and list them, instead of stopping at the first."),
    text_root: Optional[Path] = typer.Option(None, help="native format: folder that document paths are relative "
                                             "to (same as --reader-option text_root=DIR)."),
) -> None:
    """Turn annotated documents into a sentence-level, multi-label dataset."""
    from stanceclf.data.dataset import check_exports, format_statistics, from_annotations, save_dataset, statistics
    from stanceclf.data.readers import ReadReport

    if text_root is not None:
        reader_option = [*reader_option, f"text_root={text_root}"]
    exports = tuple(e for e in export.split(",") if e and e != "none")
    try:
        check_exports(exports, where="--export")
        label_schema, source, config, resolve = _source_and_config(
            recipe, inputs, fmt, schema, label_map, split, seed, min_overlap, lenient, reader_option)
        report = ReadReport()
        dataset, info = from_annotations(source, label_schema, config, resolve=resolve, report=report)
        save_dataset(dataset, info, label_schema, out, export=exports)
    except StanceclfError as error:
        fail(error)
    typer.echo(report.summary(), err=True)
    typer.echo(format_statistics(statistics(dataset, label_schema)))
    typer.echo(f"wrote {out}")


def agreement(
    first: Path = typer.Argument(..., help="One annotator's annotations (native format)."),
    second: Path = typer.Argument(..., help="The other annotator's annotations of the same documents."),
    schema: str = typer.Option("claim-types", help="Schema name or path."),
) -> None:
    """Sentence-level agreement between two annotations: F1 and Cohen's kappa per label."""
    from stanceclf.data.agreement import format_agreement, sentence_agreement

    try:
        label_schema, a, b = _read_pair(first, second, schema)
        typer.echo(format_agreement(sentence_agreement(a, b, label_schema, names=(str(first), str(second)))))
    except StanceclfError as error:
        fail(error)


@sheets_app.command("export")
def sheets_export(
    texts: List[Path] = typer.Argument(..., help="Text files, folders of .txt, or task files (.json) that "
                                       "'stanceclf suggest' wrote (use --blind for annotators who must not see "
                                       "the model's labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the sheets (keep it out of git if the texts "
                             "may not be redistributed)."),
    schema: str = typer.Option("claim-types", help="Schema name or path (its label codes head each sheet)."),
) -> None:
    """Write numbered sentence sheets for annotators."""
    from stanceclf.data.schema import load_schema
    from stanceclf.data.sheets import export_sheets, sheet_texts

    try:
        documents = sheet_texts(texts)
        count = export_sheets(documents, out, schema=load_schema(schema))
    except (StanceclfError, OSError) as error:
        fail(error)
    typer.echo(f"wrote {len(documents)} sheets with {count} sentences to {out}")


@sheets_app.command("import")
def sheets_import(
    decisions: Path = typer.Argument(..., help="Folder of <doc_id>.tsv decision files."),
    sheets: Path = typer.Option(..., help="Folder with the <doc_id>.offsets.json files of the sheets."),
    texts: Optional[Path] = typer.Option(None, help="Folder with the <doc_id>.txt documents."),
    corpus: List[Path] = typer.Option([], help="JSONL corpus holding the documents by id (as 'stanceclf score' "
                                      "reads it); they are stored as the file and the record's id. Repeatable."),
    annotator: str = typer.Option(..., help="Who decided these labels (stored with every span)."),
    out: Path = typer.Option(..., "--out", "-o", help="Native stand-off JSONL to write."),
    schema: str = typer.Option("claim-types", help="Schema name or path."),
) -> None:
    """Turn an annotator's decision files into stand-off annotations (text referenced, not copied)."""
    from stanceclf.data.readers import write_native
    from stanceclf.data.schema import load_schema
    from stanceclf.data.sheets import import_decision_folder

    try:
        documents, paths, records = import_decision_folder(decisions, sheets, load_schema(schema), annotator,
                                                           texts=texts, corpora=corpus)
        write_native(documents, out, text_paths=paths, corpus_records=records)
    except (StanceclfError, OSError) as error:
        fail(error)
    typer.echo(f"wrote {len(documents)} documents to {out}")


def _read_pair(first: Path, second: Path, schema: str):
    from stanceclf.data.readers import read_annotations
    from stanceclf.data.schema import load_schema

    label_schema = load_schema(schema)
    return (label_schema, read_annotations("native", first, labels=label_schema.label_names),
            read_annotations("native", second, labels=label_schema.label_names))


@adjudicate_app.command("export")
def adjudicate_export(
    first: Path = typer.Argument(..., help="One annotator's annotations (native format)."),
    second: Path = typer.Argument(..., help="The other annotator's annotations of the same documents."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the adjudication sheets, for the adjudicator "
                             "(keep it out of git if the texts may not be redistributed)."),
    key: Optional[Path] = typer.Option(None, help="Where to write which annotation each X stands for (JSONL), "
                                       "outside OUT. Default: OUT.key.jsonl beside the folder."),
    seed: int = typer.Option(0, help="Seed of the order in which each sentence's two label sets are shown."),
    schema: str = typer.Option("claim-types", help="Schema name or path."),
) -> None:
    """Write a sheet per document with a disagreement: the whole article, each disputed sentence marked and
    followed by the two label sets as X and Y in a drawn order (the key, kept apart, says whose is whose)."""
    from stanceclf.data.adjudication import export_adjudication_sheets

    key = key or out.with_name(out.name + ".key.jsonl")
    try:
        label_schema, a, b = _read_pair(first, second, schema)
        found = export_adjudication_sheets(a, b, label_schema, out, key, seed=seed, names=(str(first), str(second)))
    except (StanceclfError, OSError) as error:
        fail(error)
    documents = len({item.doc_id for item in found})
    typer.echo(f"wrote {documents} adjudication sheets with {len(found)} disputed sentences to {out}; the key "
               f"(whose set each X is) to {key}: do not give it to the adjudicator")


@adjudicate_app.command("import")
def adjudicate_import(
    decisions: Path = typer.Argument(..., help="Folder of the adjudicator's <doc_id>.tsv files: one line per "
                                     "disputed sentence, <index><TAB><labels><TAB><reason>."),
    first: Path = typer.Option(..., help="The first annotation, as given to 'adjudicate export'."),
    second: Path = typer.Option(..., help="The second annotation, as given to 'adjudicate export'."),
    sheets: Path = typer.Option(..., help="Folder of the adjudication sheets (their <doc_id>.offsets.json)."),
    annotator: str = typer.Option(..., help="Who adjudicated (stored with every span of a disputed sentence)."),
    out: Path = typer.Option(..., "--out", "-o", help="Native stand-off JSONL to write: every document, texts "
                             "referenced as the first file references them. The decisions and their reasons go "
                             "to OUT.reasons.jsonl."),
    schema: str = typer.Option("claim-types", help="Schema name or path."),
) -> None:
    """Make the adjudicated annotation: agreed sentences keep their labels, disputed ones take the decision."""
    from stanceclf.data.adjudication import merge_adjudicated
    from stanceclf.data.readers import stored_references, write_native
    from stanceclf.files import replaced_atomically

    reasons_file = out.with_name(out.name + ".reasons.jsonl")
    try:
        label_schema, a, b = _read_pair(first, second, schema)
        merged, reasons = merge_adjudicated(a, b, decisions, sheets, label_schema, annotator,
                                            names=(str(first), str(second)))
        text_paths, corpus_records = stored_references(first)
        with replaced_atomically(reasons_file) as tmp:
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in reasons), encoding="utf-8")
        write_native(merged, out, text_paths=text_paths, corpus_records=corpus_records)
    except (StanceclfError, OSError) as error:
        fail(error)
    typer.echo(f"wrote {len(merged)} adjudicated documents to {out} ({len(reasons)} sentences decided by "
               f"{annotator}; their reasons in {reasons_file})")
