"""The documentation that is made from the code stays the code's: the configuration reference."""
from __future__ import annotations

import dataclasses

from conftest import ROOT

from finetune.config import Config, field_schema, schema_fields
from finetune.tools import reference

REFERENCE = ROOT / "docs" / "configuration.md"


def test_the_configuration_reference_is_the_schema_s():
    assert REFERENCE.read_text() == reference.render(), (
        "docs/configuration.md is out of date: python -m finetune.tools reference --write docs/configuration.md")


def test_every_key_of_the_schema_is_in_the_reference_with_a_meaning():
    rows = {line.split("`")[1]: line for line in reference.render().splitlines() if line.startswith("| `")}
    expected = []
    for prefix, schema in reference.sections(Config):
        expected += [prefix + name for name, hint in schema_fields(schema).items()
                     if not dataclasses.is_dataclass(field_schema(hint))]
    assert sorted(rows) == sorted(expected)
    assert not [key for key, row in rows.items() if row.rstrip().endswith("|  |")], "keys without a comment"
    assert "`train.device`" in rows["train.device"] and "auto" in rows["train.device"]
