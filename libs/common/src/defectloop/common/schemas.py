"""JSON Schemas of the event contracts, generated from the models into ``docs/events/``.

``python -m defectloop.common.schemas [DIR]`` regenerates them; ``--check`` exits 1 when the committed
files differ from the models (the MES depends on these files, so they must never silently drift).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from defectloop.common.events import EVENT_MODELS, DeadLetter

DEFAULT_DIR = Path("docs/events")


def _render(model: type[BaseModel], title: str) -> str:
    schema = model.model_json_schema(mode="serialization")
    schema["title"] = title
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected_schemas() -> dict[str, str]:
    """File name -> schema text, for every event topic and the DLQ envelope."""
    files = {f"{m.topic}.schema.json": _render(m, m.topic) for m in EVENT_MODELS}
    files["dlq.schema.json"] = _render(DeadLetter, "<topic>.dlq")
    return files


def write_schemas(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in expected_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale_schemas(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of schema files that are missing or differ from what the models generate."""
    stale = []
    for name, text in expected_schemas().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
    return stale


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    directory = Path(args[0]) if args else DEFAULT_DIR
    if check:
        stale = stale_schemas(directory)
        for name in stale:
            print(f"stale: {directory / name}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
