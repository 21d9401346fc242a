"""Write the JSON Schema of every wire/storage model to ``schemas/jsonschema/<Name>.json``.

``python -m schemas.export`` regenerates the checked-in files; ``--check`` exits 1 when they
are stale (CI). Output is stable: sorted keys, two-space indent, trailing newline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.abid import AbidMetadata
from schemas.events import SCHEMA_VERSION, BinEvent
from schemas.records import AuditVerdict, DeadLetterRecord, DiscrepancyRecord

SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"
MODELS: tuple[type[BaseModel], ...] = (
    BinEvent, AbidMetadata, AuditVerdict, DiscrepancyRecord, DeadLetterRecord,
)


def schema_path(model: type[BaseModel], directory: Path = SCHEMA_DIR) -> Path:
    """Where the checked-in schema of ``model`` lives."""
    return directory / f"{model.__name__}.json"


def render(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` (validation mode: what a producer may send) as text."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:binaudit:schema:{model.__name__}:v{SCHEMA_VERSION}"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_schema(model: type[BaseModel], directory: Path = SCHEMA_DIR) -> dict[str, object]:
    """The checked-in schema of ``model``."""
    loaded: dict[str, object] = json.loads(schema_path(model, directory).read_text())
    return loaded


def stale(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Schema files that are missing or differ from what the models generate."""
    out = []
    for model in MODELS:
        path = schema_path(model, directory)
        if not path.exists() or path.read_text() != render(model):
            out.append(path)
    return out


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write every schema file; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in MODELS:
        path = schema_path(model, directory)
        path.write_text(render(model))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if any file is stale")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.dir)
        for path in outdated:
            print(f"stale: {path} (run python -m schemas.export)", file=sys.stderr)
        return 1 if outdated else 0
    for path in write_all(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
