"""The checked-in JSON Schema files are current."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from schemas.events import BinEvent
from schemas.export import MODELS, SCHEMA_DIR, load_schema, main, render, stale, write_all


def test_checked_in_schema_files_are_current() -> None:
    assert stale() == [], "run: python -m schemas.export"
    assert main(["--check"]) == 0


def test_check_detects_stale_files(tmp_path: Path) -> None:
    write_all(tmp_path)
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "BinEvent.json").write_text("{}\n")
    assert main(["--check", "--dir", str(tmp_path)]) == 1


def test_render_is_stable_and_every_schema_is_valid() -> None:
    for model in MODELS:
        assert render(model) == render(model)
        jsonschema.Draft202012Validator.check_schema(json.loads(render(model)))
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} >= {f"{m.__name__}.json" for m in MODELS}


def test_schema_rejects_what_the_model_rejects() -> None:
    validator = jsonschema.Draft202012Validator(load_schema(BinEvent))
    good = {"schema_version": 1, "bin_id": "00001", "captured_at": "2026-01-01T00:00:00Z",
            "image_uri": "s3://binaudit-images/bin-images/00001.jpg", "expected_quantity": 3}
    assert validator.is_valid(good)
    for bad in ({"expected_quantity": -3}, {"expected_quantity": 1001}, {"bin_id": "a\x01"},
                {"image_uri": "http://x/y"}, {"schema_version": 2}, {"extra": 1}):
        assert not validator.is_valid({**good, **bad}), bad
