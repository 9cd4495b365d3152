"""The README's commands and examples are the ones that work: its set-up block is what CI runs, and its
worked recipe and schema load."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_first_block_is_two_commands_and_ci_runs_them():
    first = commands(code_blocks("bash")[0])
    assert first == ["bash setup.sh",
                     "bash setup.sh test && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider"]
    ci = commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert ci[-2:] == first


def test_readme_worked_schema_and_recipe_load(tmp_path):
    import textwrap

    from stanceclf.data.schema import load_schema
    from stanceclf.train.recipe import load_recipe

    toml = [textwrap.dedent(block) for block in re.findall(r"```toml\n(.*?)```", textwrap.dedent(README), flags=re.S)]
    toml = [textwrap.dedent(re.sub(r"^   ", "", block, flags=re.M)) for block in toml]
    schema_text = next(block for block in toml if "[[labels]]" in block)
    recipe_text = next(block for block in toml if "[training]" in block)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "my-schema.toml").write_text(schema_text, encoding="utf-8")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "my-model.toml").write_text(recipe_text, encoding="utf-8")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "export.json").write_text("[]", encoding="utf-8")
    schema = load_schema(tmp_path / "labels" / "my-schema.toml")
    assert schema.name == "my-schema" and [label.name for label in schema.labels] == ["prediction"]
    recipe = load_recipe(tmp_path / "training" / "my-model.toml")
    assert recipe.data.format == "label-studio"
    assert load_schema(recipe.schema_path).name == "my-schema"
