"""The real ABID sample JPEGs, read without Kafka/S3/database clients (GPU box safe).

Looked for in ``$BINAUDIT_BENCH_SAMPLES``, ``<repo>/shared/data/abid-sample`` and
``<repo>/../shared/data/abid-sample``. Where none exists (a bare GPU machine), and only when
asked (``allow_synthetic``), JPEGs of the sample's typical sizes are synthesised instead and
the results say so.
"""

from __future__ import annotations

import csv
import io
import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "abid-sample"
CANDIDATES = (REPO_ROOT / "shared" / "data" / "abid-sample", SAMPLE_DIR)


def find_sample_dir() -> Path | None:
    env = os.environ.get("BINAUDIT_BENCH_SAMPLES")
    for path in ([Path(env)] if env else []) + list(CANDIDATES):
        if (path / "images").is_dir() or (path / "bin-images").is_dir():
            return path
    return None


def sample_images(source: Path | None = None, *, allow_synthetic: bool = False) -> list[bytes]:
    """The sample's JPEG bytes in ``labels.csv`` order (else sorted by file name)."""
    source = source or find_sample_dir()
    if source is None:
        if allow_synthetic:
            return synthetic_jpegs()
        raise FileNotFoundError(f"no ABID sample in $BINAUDIT_BENCH_SAMPLES or {CANDIDATES}")
    image_dir = next((source / d for d in ("images", "bin-images") if (source / d).is_dir()),
                     source / "images")
    labels = source / "labels.csv"
    if labels.is_file():
        with labels.open(newline="") as fh:
            paths = [image_dir / f"{Path(row['image']).stem}.jpg" for row in csv.DictReader(fh)]
    else:
        paths = sorted(image_dir.glob("*.jpg"))
    images = [p.read_bytes() for p in paths if p.is_file()]
    if not images:
        raise FileNotFoundError(f"no JPEGs under {image_dir}")
    return images


def synthetic_jpegs(n: int = 350, seed: int = 0) -> list[bytes]:
    """Deterministic stand-ins: noisy gradients at ABID-like sizes (~300–500 px), quality 85."""
    import numpy as np
    from PIL import Image, ImageFilter

    rng = random.Random(seed)
    # Image.effect_noise draws from C's rand(), which no seed here reaches: the noise comes
    # from a seeded numpy generator instead (the same Gaussian around grey 128).
    noise = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = rng.randint(300, 520), rng.randint(280, 400)
        grey = noise.normal(128.0, rng.uniform(20, 80), (h, w)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(grey).convert("RGB")
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out
