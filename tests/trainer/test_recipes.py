"""The count-aware recipe: folds, calibration, thresholds, and the cache -> cv -> counter path
on real sample images (small image size, one epoch: behaviour, not quality)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core.model.artifact import load_artifact
from core.model.preprocess import load_uint8, normalize
from inference.counter import BinCounter
from trainer.cv import stratified_parts


def test_stratified_parts_are_disjoint_cover_everything_and_keep_proportions() -> None:
    counts = np.array([0] * 20 + [1] * 50 + [3] * 80 + [7] * 30 + [40] * 20)
    parts = stratified_parts(counts, [1.0] * 5, seed=0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(counts)))
    for part in parts:
        assert (counts[part] == 3).sum() == 16 and (counts[part] == 40).sum() == 4


def _subset(sample_dir: Path, root: Path, n: int) -> Path:
    """The first ``n`` sample images (every count present) as their own ABID folder."""
    rows = (sample_dir / "labels.csv").read_text().splitlines()
    (root / "images").mkdir(parents=True)
    kept = [rows[0]]
    for row in rows[1:n + 1]:
        rel = row.split(",")[0]
        shutil.copy(sample_dir / rel, root / rel)
        kept.append(row)
    (root / "labels.csv").write_text("\n".join(kept) + "\n")
    return root


def test_cache_cv_and_counter_on_real_images(sample_dir: Path, tmp_path: Path,
                                             cli: Callable[..., str]) -> None:
    cache = tmp_path / "cache"
    source = _subset(sample_dir, tmp_path / "subset", 80)
    cli("train", "cache", "--source-dir", source, "--out", cache, "--image-size", "64",
        "--workers", "2")
    meta = json.loads((cache / "meta.json").read_text())
    assert len(meta["ids"]) == 80 and meta["size"] == 64 and meta["flip_cached"]
    assert all(isinstance(i, str) for i in meta["ids"])  # "00523" and "523" stay distinct

    md, js = tmp_path / "RESULTS.md", tmp_path / "cv.json"
    md.write_text("# Results\n\nbefore\n")
    cli("train", "cv", "--cache", cache, "--folds", "2", "--epochs", "1", "--results-md", md,
        "--results-json", js)
    table = md.read_text()
    assert table.startswith("# Results\n\nbefore\n") and "majority baseline" in table
    assert "reference:" in table and "binaudit:" in table
    summary = json.loads(js.read_text())["summary"]
    assert set(summary) == {"majority", "reference", "count"}
    assert summary["count"]["coverage"][0] > summary["reference"]["coverage"][0]

    out = tmp_path / "counter"
    cli("train", "counter", "--cache", cache, "--epochs", "1", "--out", out)
    model, card = load_artifact(out)
    assert card.class_counts == list(range(11)) and card.input_size == 64
    assert card.calibration.temperature > 0 and card.calibration.ece_after is not None
    assert card.decision.chosen_on == "validation"
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["_fc.1.weight"].dtype == torch.float16  # shipped small
    counter = BinCounter.from_artifact(out, "cpu")
    image = load_uint8(sample_dir / "images" / f"{meta['ids'][0]}.jpg", card)
    [prediction] = counter.infer(normalize(image[None], card.mean, card.std))
    assert prediction.count in card.class_counts
    assert next(model.parameters()).dtype == torch.float32
