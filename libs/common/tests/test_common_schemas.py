"""The committed JSON Schemas are the MES's contract: they must match the models."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common import schemas

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[3] / "docs" / "events"


def test_committed_schemas_match_the_models() -> None:
    stale = schemas.stale_schemas(DOCS)
    assert stale == [], (
        f"event schemas changed without regenerating docs/events: {stale}; "
        "run `.venv/bin/python -m defectloop.common.schemas` and commit the result"
    )


def test_a_changed_schema_file_is_detected(tmp_path: Path) -> None:
    schemas.write_schemas(tmp_path)
    target = tmp_path / "prediction.made.schema.json"
    target.write_text(target.read_text().replace('"defective"', '"is_defective"'))
    assert schemas.stale_schemas(tmp_path) == ["prediction.made.schema.json"]


def test_every_field_of_every_contract_is_described() -> None:
    import json

    undocumented = []
    for name, text in schemas.expected_schemas().items():
        schema = json.loads(text)
        for definition in [schema, *schema.get("$defs", {}).values()]:
            for field, spec in definition.get("properties", {}).items():
                if "description" not in spec:
                    undocumented.append(f"{name}:{field}")
    assert undocumented == []
