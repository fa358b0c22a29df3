"""JSON Schemas of the desired-state file formats, generated from the pydantic models.

Editors (VS Code's YAML extension, IntelliJ) use them for completion and inline errors:
``# yaml-language-server: $schema=../schemas/connector.schema.json``. Regenerate after changing
`reconciler.config` with ``python -m reconciler.jsonschema``; a test fails when they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reconciler.config import Connector, Platform, SourceSchema

SCHEMAS = {
    "platform.schema.json": Platform,
    "connector.schema.json": Connector,
    "source-schema.schema.json": SourceSchema,
}
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "schemas"


def generate() -> dict[str, str]:
    """File name → JSON text of each schema."""
    result = {}
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema(by_alias=True)
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": name, **schema}
        result[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return result


def main() -> int:
    OUTPUT_DIR.mkdir(exist_ok=True)
    for name, text in generate().items():
        (OUTPUT_DIR / name).write_text(text)
        print(f"wrote schemas/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
