"""Label schemas and training recipes: shipped files load, bad files fail early with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from stanceclf.errors import RecipeError, SchemaError
from stanceclf.data.readers import FORMATS
from stanceclf.train.recipe import Recipe, apply_override, load_recipe
from stanceclf.data.schema import SCHEMA_DIRS, LabelSchema, load_schema

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SCHEMAS = sorted((REPO / "labels").glob("*.toml"))
RECIPES = sorted((REPO / "training").glob("*.toml"))

GOOD_LABEL = '[[labels]]\nname = "prediction"\ndefinition = "A claim about what will or may happen."\n'
HEADER = 'name = "test-schema"\nversion = "1"\n'

MINIMAL_RECIPE = """
name = "tiny"
schema = "claim-types"
output_dir = "out/model"

[data]
inputs = ["annotations.jsonl"]

[training]
epochs = 2
"""


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


# --- schemas --------------------------------------------------------------------------------------


def test_schema_shipped_files_present():
    assert {p.stem for p in SHIPPED_SCHEMAS} >= {"claim-types", "ptc-propaganda", "ptc-techniques"}
    assert REPO / "labels" in SCHEMA_DIRS


@pytest.mark.parametrize("path", SHIPPED_SCHEMAS, ids=lambda p: p.stem)
def test_schema_shipped_schemas_load(path):
    schema = load_schema(path.stem)
    assert schema == LabelSchema.from_file(path) == load_schema(path)
    assert schema.name == path.stem
    assert schema.version and schema.labels
    assert all(len(label.definition) >= 10 for label in schema.labels)


def test_schema_claim_types_has_exactly_the_three_labels():
    schema = load_schema("claim-types")
    assert schema.label_names == ["prediction", "threat_framing", "policy_attribution"]
    assert schema.index("threat_framing") == 1
    assert "forecast" in schema.definition("prediction")
    with pytest.raises(KeyError):
        schema.definition("propaganda")


def test_schema_ptc_schemas():
    assert load_schema("ptc-propaganda").label_names == ["propaganda"]
    techniques = load_schema("ptc-techniques").label_names
    assert len(techniques) == 18 and len(set(techniques)) == 18


def test_schema_dict_round_trip():
    schema = load_schema("claim-types")
    assert LabelSchema.from_dict(schema.to_dict()) == schema


def test_schema_duplicate_label_raises_naming_file(tmp_path):
    path = write(tmp_path, "dup.toml", HEADER + GOOD_LABEL + GOOD_LABEL)
    with pytest.raises(SchemaError, match=r"duplicate label names: \['prediction'\]") as excinfo:
        LabelSchema.from_file(path)
    assert excinfo.value.where == str(path)
    assert str(excinfo.value).startswith(f"[E001] {path}: ")


@pytest.mark.parametrize("bad_name", ["Prediction", "threat-framing", "1st_label", "has space", ""])
def test_schema_bad_label_name_raises_naming_file(tmp_path, bad_name):
    path = write(tmp_path, "bad.toml", HEADER + GOOD_LABEL.replace('"prediction"', f'"{bad_name}"'))
    with pytest.raises(SchemaError, match="lower_snake_case") as excinfo:
        load_schema(path)
    assert excinfo.value.where == str(path)
    assert "labels.0.name" in str(excinfo.value)


def test_schema_missing_definition_raises_naming_file(tmp_path):
    path = write(tmp_path, "nodef.toml", HEADER + '[[labels]]\nname = "prediction"\n')
    with pytest.raises(SchemaError, match=r"field 'labels\.0\.definition': Field required") as excinfo:
        LabelSchema.from_file(path)
    assert excinfo.value.where == str(path)


def test_schema_too_short_definition_and_unknown_key_rejected(tmp_path):
    short = write(tmp_path, "short.toml", HEADER + '[[labels]]\nname = "prediction"\ndefinition = "todo"\n')
    with pytest.raises(SchemaError, match=r"labels\.0\.definition"):
        LabelSchema.from_file(short)
    extra = write(tmp_path, "extra.toml", HEADER + GOOD_LABEL + 'colour = "red"\n')
    with pytest.raises(SchemaError, match=r"labels\.0\.colour"):
        LabelSchema.from_file(extra)


def test_schema_without_labels_rejected(tmp_path):
    path = write(tmp_path, "empty.toml", HEADER + "labels = []\n")
    with pytest.raises(SchemaError, match="at least one label") as excinfo:
        LabelSchema.from_file(path)
    assert excinfo.value.where == str(path)


def test_schema_invalid_toml_and_missing_file(tmp_path):
    path = write(tmp_path, "broken.toml", 'name = "x\n')
    with pytest.raises(SchemaError, match="not valid TOML") as excinfo:
        LabelSchema.from_file(path)
    assert excinfo.value.where == str(path)
    with pytest.raises(SchemaError, match="schema file not found"):
        load_schema(tmp_path / "absent.toml")


def test_schema_unknown_name_lists_shipped_schemas():
    with pytest.raises(SchemaError, match="no schema file or shipped schema named 'nope'.*claim-types"):
        load_schema("nope")


def test_schema_from_labels():
    schema = LabelSchema.from_labels(["a", "b_c"])
    assert schema.label_names == ["a", "b_c"]
    with pytest.raises(ValueError):
        LabelSchema.from_labels(["a", "a"])


# --- recipes --------------------------------------------------------------------------------------


def test_recipe_shipped_files_present():
    assert {p.stem for p in RECIPES} >= {"claim-types", "ptc-propaganda", "ptc-techniques"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem
    assert recipe.source == str(path.resolve())
    schema = load_schema(recipe.schema_name)
    assert recipe.data.format in FORMATS
    # Every label the mapping produces is in the schema (None would drop a label on purpose).
    assert {v for v in recipe.data.label_map.values() if v is not None} <= set(schema.label_names)
    assert recipe.resolve(recipe.output_dir).is_absolute()
    assert recipe.run_path.is_absolute()


def test_recipe_paths_resolve_against_the_recipe_file(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = load_recipe(write(folder, "r.toml", MINIMAL_RECIPE))
    assert recipe.resolve(recipe.data.inputs[0]) == folder / "annotations.jsonl"
    assert recipe.resolve(recipe.output_dir) == folder / "out" / "model"
    assert recipe.run_path == folder / "out" / "model.run"
    assert recipe.resolve("/abs/file") == Path("/abs/file")


def test_recipe_minimal_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.toml", MINIMAL_RECIPE))
    assert (recipe.training.epochs, recipe.training.method, recipe.data.format, recipe.seed) == (
        2, "full", "native", 13)
    config = recipe.data.build_settings()
    assert config.seed == 13 and config.split_ratios == {"train": 0.7, "dev": 0.15, "test": 0.15}


@pytest.mark.parametrize("content, field", [
    (MINIMAL_RECIPE.replace("epochs = 2", 'epochs = 2\nlearning_rate = "fast"'), "training.learning_rate"),
    (MINIMAL_RECIPE.replace("epochs = 2", "learn_rate = 1e-4"), "training.learn_rate"),
    (MINIMAL_RECIPE.replace("epochs = 2", "batch_size = 0"), "training.batch_size"),
    (MINIMAL_RECIPE.replace("epochs = 2", 'method = "qlora"'), "training.method"),
    (MINIMAL_RECIPE + 'colour = "red"\n', "training.colour"),
    (MINIMAL_RECIPE.replace('name = "tiny"\n', ""), "name"),
    (MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]', 'inputs = ["a.jsonl"]\nformat = "xml"'), "data.format"),
    (MINIMAL_RECIPE.replace("epochs = 2", "eval_every = 0"), "training.eval_every"),
])
def test_recipe_bad_field_raises_naming_the_field(tmp_path, content, field):
    path = write(tmp_path, "r.toml", content)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    assert f"field '{field}'" in str(excinfo.value)
    assert excinfo.value.where == str(path)
    assert str(excinfo.value).startswith("[E010] ")


def test_recipe_both_inputs_and_train_rejected(tmp_path):
    content = MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]',
                                     'inputs = ["annotations.jsonl"]\ntrain = ["t"]\ndev = ["d"]')
    with pytest.raises(RecipeError, match=r"field 'data'.*exactly one of data\.inputs, data\.train"):
        load_recipe(write(tmp_path, "r.toml", content))


def test_recipe_no_data_source_and_train_without_dev_rejected(tmp_path):
    with pytest.raises(RecipeError, match="exactly one of data.inputs"):
        load_recipe(write(tmp_path, "r.toml", MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]', "")))
    content = MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]', 'train = ["t"]')
    with pytest.raises(RecipeError, match="data.train needs data.dev"):
        load_recipe(write(tmp_path, "r.toml", content))


def test_recipe_dev_or_test_with_inputs_rejected(tmp_path):
    content = MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]', 'inputs = ["annotations.jsonl"]\ntest = ["t"]')
    with pytest.raises(RecipeError, match="data.dev and data.test go with data.train"):
        load_recipe(write(tmp_path, "r.toml", content))


def test_recipe_build_settings_beside_a_built_dataset_rejected(tmp_path):
    content = MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]', 'dataset = "built"\nsplit_ratios = '
                                     '{ train = 0.5, dev = 0.5 }')
    with pytest.raises(RecipeError, match="data.dataset is already built, so data.split_ratios would be ignored"):
        load_recipe(write(tmp_path, "r.toml", content))
    assert load_recipe(write(tmp_path, "ok.toml", MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]',
                                                                         'dataset = "built"'))).data.dataset


def test_recipe_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path, "r.toml", "name = \n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.toml")


def test_recipe_override_parses_numbers_strings_and_tables():
    data: dict = {"training": {"epochs": 8}}
    apply_override(data, "training.epochs=3")
    apply_override(data, "training.learning_rate=1e-4")
    apply_override(data, "training.storage_dtype=float16")  # not TOML: kept as a string
    apply_override(data, 'name="quoted name"')
    apply_override(data, "schema=ptc-techniques")
    apply_override(data, "data.label_map={}")
    apply_override(data, 'data.split_ratios={ train = 0.8, dev = 0.2 }')
    apply_override(data, 'data.inputs=["a.jsonl", "b.jsonl"]')
    apply_override(data, "data.strict=false")
    assert data == {
        "training": {"epochs": 3, "learning_rate": 1e-4, "storage_dtype": "float16"},
        "name": "quoted name",
        "schema": "ptc-techniques",
        "data": {"label_map": {}, "split_ratios": {"train": 0.8, "dev": 0.2}, "inputs": ["a.jsonl", "b.jsonl"],
                 "strict": False},
    }
    assert type(data["training"]["epochs"]) is int and type(data["training"]["learning_rate"]) is float


def test_recipe_override_malformed_or_through_a_value_rejected():
    with pytest.raises(RecipeError, match="must look like section.key=value"):
        apply_override({}, "training.epochs")
    with pytest.raises(RecipeError, match="'name' is not a section"):
        apply_override({"name": "x"}, "name.first=3")


def test_recipe_overrides_applied_and_validated(tmp_path):
    path = write(tmp_path, "r.toml", MINIMAL_RECIPE)
    recipe = load_recipe(path, ["training.epochs=0.5", "seed=7", "schema=ptc-propaganda",
                                'data.label_map={"*" = "propaganda"}'])
    assert (recipe.training.epochs, recipe.seed, recipe.schema_name) == (0.5, 7, "ptc-propaganda")
    assert recipe.data.label_map == {"*": "propaganda"}
    with pytest.raises(RecipeError, match="field 'training.learning_rate'") as excinfo:
        load_recipe(path, ["training.learning_rate=fast"])
    assert excinfo.value.where == str(path)
    with pytest.raises(RecipeError, match="field 'training.epochs'"):
        load_recipe(path, ["training.epochs=0"])
    with pytest.raises(RecipeError, match="field 'data'"):
        load_recipe(path, ['data.train=["t"]', 'data.dev=["d"]'])


def test_recipe_build_defaults_are_declared_once():
    """The recipe's [data] section takes its build defaults from BuildConfig (no second declaration)."""
    from stanceclf.data.dataset import BuildConfig
    from stanceclf.train.recipe import DataSection

    section = DataSection(inputs=["a.jsonl"])
    assert section.build_settings() == BuildConfig()
    assert BuildConfig().split_ratios == {"train": 0.7, "dev": 0.15, "test": 0.15}


def test_recipe_split_seed_follows_the_recipe_seed(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.toml", MINIMAL_RECIPE.replace('name = "tiny"', 'name = "tiny"\nseed = 7')))
    assert recipe.data.seed == 7
    pinned = MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]', 'inputs = ["annotations.jsonl"]\nseed = 2')
    assert load_recipe(write(tmp_path, "p.toml", pinned)).data.seed == 2


def test_recipe_relative_schema_path_resolves_against_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "schemas").mkdir()
    write(tmp_path / "schemas", "mine.toml", HEADER + GOOD_LABEL)
    recipe = load_recipe(write(tmp_path, "r.toml", MINIMAL_RECIPE.replace('"claim-types"', '"schemas/mine.toml"')))
    monkeypatch.chdir(REPO)  # not the recipe's folder
    assert load_schema(recipe.schema_path).name == "test-schema"


def test_recipe_reader_options_are_validated_against_the_reader(tmp_path):
    good = MINIMAL_RECIPE.replace('inputs = ["annotations.jsonl"]',
                                  'inputs = ["a.jsonl"]\nformat = "doccano"\nreader_options = { text_field = "body" }')
    assert load_recipe(write(tmp_path, "g.toml", good)).data.reader_options == {"text_field": "body"}
    bad = good.replace("text_field", "text_fields")
    with pytest.raises(RecipeError, match=r"reader has no option 'text_fields'.*text_field"):
        load_recipe(write(tmp_path, "b.toml", bad))
