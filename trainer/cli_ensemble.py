"""`binaudit train ensemble-score`: would averaging several counters make the score discriminate?

A row of the comparison for the mean of the members' probabilities (each member as its card
runs it, flip TTA included), with one temperature and the thresholds fitted on the same
validation bins as every other row. Each member's validation logits are kept in
``artifacts/cache/logits/`` so that other combinations cost nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from core.cliutil import console, fail
from core.model.artifact import load_artifact
from core.model.card import ModelCard
from trainer import compare
from trainer.cli_whole import RESULTS_DIR, RESULTS_MD, _mask, _split, _summary, _write_row
from trainer.pixcache import PixelCache, load_pixels
from trainer.whole import predict_logits

Opt = typer.Option
LOGITS_CACHE = Path("artifacts/cache/logits")


def member_logits(artifact: Path, cache: PixelCache, val_idx: np.ndarray,
                  store: Path = LOGITS_CACHE) -> tuple[np.ndarray, float, ModelCard]:
    """(validation logits, images/s of computing them, card) of one artifact, cached."""
    model, card = load_artifact(artifact)
    key = store / f"{card.version}-{len(cache.ids)}-{len(val_idx)}"
    if key.with_suffix(".npy").is_file():
        meta = json.loads(key.with_suffix(".json").read_text())
        return np.load(key.with_suffix(".npy")), float(meta["images_per_s"]), card
    model = model.float().to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    logits = predict_logits(model, cache.pixels, val_idx, card.input_size)
    rate = len(val_idx) / max(time.perf_counter() - t0, 1e-9)
    store.mkdir(parents=True, exist_ok=True)
    np.save(key.with_suffix(".npy"), logits)
    key.with_suffix(".json").write_text(json.dumps({"images_per_s": rate,
                                                    "artifact": str(artifact)}))
    return logits, rate, card


def mean_probability_logits(members: list[np.ndarray]) -> np.ndarray:
    """log of the members' mean softmax: logits whose softmax is the ensemble's distribution."""
    probs = [torch.softmax(torch.from_numpy(z).double(), 1) for z in members]
    return torch.log(torch.stack(probs).mean(0).clamp_min(1e-12)).numpy()


def ensemble_cmd(
    artifact: Annotated[list[Path], Opt(help="A member artifact; repeat for each.")],
    pixels: Annotated[Path, Opt(help="Cache directory from `train pixels`.")],
    name: Annotated[str, Opt(help="Row name (results file name).")] = "ensemble",
    description: str = "",
    seed: int = 0,
    val_fraction: float = 0.1,
    target_false_alarm_rate: float = 0.05,
    calibration_ids: Path | None = None,
    order: int = 60,
    results_dir: Path = RESULTS_DIR,
    results_md: Path = RESULTS_MD,
) -> None:
    """Score the mean of several artifacts' probabilities on the comparison's validation split."""
    cache = load_pixels(pixels)
    _, val_idx = _split(cache, val_fraction, seed)
    load_start = compare.load_average()
    outputs = [member_logits(a, cache, val_idx) for a in artifact]
    card = outputs[0][2]
    if any((o[2].class_counts, o[2].count_decoding) != (card.class_counts, card.count_decoding)
           for o in outputs):
        fail("members must count the same classes with the same decoding")
    scored = compare.score(mean_probability_logits([o[0] for o in outputs]),
                           cache.counts[val_idx], class_counts=card.class_counts,
                           decoding=card.count_decoding, target=target_false_alarm_rate,
                           calibrate_mask=_mask(cache, val_idx, calibration_ids))
    row: dict[str, Any] = {
        "name": name, "order": order, "members": [o[2].version for o in outputs],
        "description": description or f"mean of {len(outputs)} counters' probabilities",
        # No speed of its own: the logits may come from the cache, computed under another
        # load; an ensemble costs the sum of its members' inference times (their rows).
        **scored, "infer_images_per_s": None,
        "train_images_per_s": None, "load_start": load_start,
        "images": {"val": len(val_idx)}, "pixels": str(pixels)}
    _write_row(row, results_dir, results_md)
    console.print(f"{name}: {_summary(scored['metrics'])}")


def register(train_app: typer.Typer) -> None:
    train_app.command("ensemble-score")(ensemble_cmd)
