"""Label schemas: the single source of a model's label list.

A schema is a TOML file in ``labels/`` with a name, a version and one table per
label holding its definition. Every later stage (builder, trainer, model,
predictor) takes its labels from a :class:`LabelSchema`, never from constants.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stanceclf.errors import SchemaError, describe_validation_error, load_toml

_LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: Where the schemas shipped with the project live (a checkout or an installed package).
SCHEMA_DIRS = (
    Path(__file__).resolve().parents[2] / "labels",
    Path(__file__).resolve().parents[1] / "shipped_labels",
)


class LabelDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The label's name (lower_snake_case).")
    definition: str = Field(min_length=10, description="What the label means, in words an annotator can apply.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _LABEL_NAME.match(value):
            raise ValueError(f"label name {value!r} must be lower_snake_case (a-z, 0-9, _)")
        return value


class LabelSchema(BaseModel):
    """A named, versioned, ordered list of labels with their definitions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The schema's name, e.g. claim-types.")
    version: str = Field(description="The schema's version; changes when a label's meaning changes.")
    description: str = Field("", description="What the schema is for.")
    labels: tuple[LabelDefinition, ...] = Field(description="The labels, in model output order.")

    @model_validator(mode="after")
    def _unique_labels(self) -> "LabelSchema":
        if not self.labels:
            raise ValueError("a schema needs at least one label")
        names = [label.name for label in self.labels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate label names: {duplicates}")
        return self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def index(self, label: str) -> int:
        return self.label_names.index(label)

    def definition(self, label: str) -> str:
        for item in self.labels:
            if item.name == label:
                return item.definition
        raise KeyError(label)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "<dict>") -> "LabelSchema":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SchemaError(describe_validation_error(exc), where=where) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "LabelSchema":
        """Read a TOML schema file.

        The file has ``name``, ``version``, optional ``description`` and one
        ``[[labels]]`` table per label with ``name`` and ``definition``.
        """
        return cls.from_dict(load_toml(path, SchemaError, "schema"), where=str(path))

    @classmethod
    def from_labels(cls, names: list[str], *, name: str = "ad-hoc", version: str = "0") -> "LabelSchema":
        """A schema from bare label names, for quick experiments (definitions are placeholders)."""
        return cls(
            name=name,
            version=version,
            labels=tuple(LabelDefinition(name=n, definition=f"(no definition given for {n})") for n in names),
        )


def load_schema(name_or_path: str | Path) -> LabelSchema:
    """Load a schema by file path, or by the name of a schema shipped in ``labels/``."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return LabelSchema.from_file(path)
    for directory in SCHEMA_DIRS:
        candidate = directory / f"{name_or_path}.toml"
        if candidate.exists():
            return LabelSchema.from_file(candidate)
    known = sorted({p.stem for d in SCHEMA_DIRS if d.is_dir() for p in d.glob("*.toml")})
    raise SchemaError(f"no schema file or shipped schema named {str(name_or_path)!r}; shipped: {known}")
