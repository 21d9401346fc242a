"""A seeded console stack for the console's HTTP and browser tests: real ABID images and
metadata in a fresh moto bucket, verdicts/discrepancies in the real Postgres, two accounts."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from audit.console.accounts import upsert_account
from core.settings import Settings
from core.tables import audit_results, discrepancies, model_versions

REVIEWER, VIEWER = "rita", "victor"
PASSWORDS = {REVIEWER: "rita-secret-pw-1", VIEWER: "victor-secret-pw-1"}
MODEL = "lite0-console-test"
CLASS_COUNTS = [1, 2, 3, 4, 5]


@dataclass(frozen=True)
class Seeded:
    settings: Settings
    bucket: str
    ids: dict[str, int]  # name -> discrepancy id
    image_ids: dict[str, str]


def seed_console(settings: Settings, engine: Engine, s3: Any, sample_dir: Path,
                 bucket: str) -> Seeded:
    """Four discrepancies (three with real images + metadata, one whose image is missing),
    one on another station; scores set so the queue order is known."""
    image_ids = {"top": "00004", "second": "00005", "other_station": "00006"}
    for ident in image_ids.values():
        s3.put_object(Bucket=bucket, Key=f"bin-images/{ident}.jpg",
                      Body=(sample_dir / "images" / f"{ident}.jpg").read_bytes())
        s3.put_object(Bucket=bucket, Key=f"metadata/{ident}.json",
                      Body=(sample_dir / "metadata" / f"{ident}.json").read_bytes())
    base = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    plan = [  # name, image id, station, score, expected, predicted
        ("top", image_ids["top"], "st-1", 0.97, 3, 5),
        ("second", image_ids["second"], "st-1", 0.80, 2, 4),
        ("other_station", image_ids["other_station"], "st-2", 0.90, 4, 2),
        ("missing_image", "99999", "st-1", None, 1, 3),
    ]
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        conn.execute(insert(model_versions).values(
            version=MODEL, architecture="efficientnet_lite0", artifact_uri="file:///models/x",
            card={"class_counts": CLASS_COUNTS}))
        for i, (name, ident, station, score, expected, predicted) in enumerate(plan):
            event = f"evt-{uuid.uuid4().hex}"
            meta = json.loads((sample_dir / "metadata" / f"{ident}.json").read_text()) \
                if ident != "99999" else None
            if meta is not None:
                expected = int(meta["EXPECTED_QUANTITY"])
                predicted = expected + 2 if expected <= 3 else 1
            probs = {str(c): (0.6 if c == predicted else 0.1) for c in CLASS_COUNTS}
            common = {"event_id": event, "bin_id": f"bin-{ident}", "model_version": MODEL,
                      "expected_quantity": expected, "predicted_quantity": predicted,
                      "confidence": 0.6, "p_expected": None if score is None else 1 - score,
                      "discrepancy_score": score}
            conn.execute(insert(audit_results).values(
                **common, image_uri=f"s3://{bucket}/bin-images/{ident}.jpg",
                captured_at=base + timedelta(minutes=i), station_id=station,
                robot_id=f"robot-{i}", class_probabilities=probs, status="mismatch",
                topic="bin-events", partition=0, offset=i))
            ids[name] = int(conn.execute(insert(discrepancies).values(**{
                k: v for k, v in common.items()}).returning(discrepancies.c.id)).scalar_one())
        upsert_account(conn, name=REVIEWER, role="reviewer", password=PASSWORDS[REVIEWER])
        upsert_account(conn, name=VIEWER, role="viewer", password=PASSWORDS[VIEWER])
    return Seeded(settings, bucket, ids, image_ids)
