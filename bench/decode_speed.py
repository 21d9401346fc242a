"""Preprocessing: images/s per core for the real sample JPEGs, bytes → normalised tensor.

Methods (all end in the model's input, a 3×S×S float tensor normalised like the card says):

* ``pillow``: Pillow full decode + torchvision Resize/ToTensor/Normalize
  (``Preprocessor(jpeg_draft=False)``);
* ``pillow-draft``: the worker's path, ``inference.counter.Preprocessor`` (JPEG draft mode
  lets libjpeg downscale by 1/2, 1/4 or 1/8 in the DCT while the result stays ≥ S);
* ``tv-decode-cpu``: ``torchvision.io.decode_jpeg`` on CPU + tensor resize (antialias) +
  normalise;
* ``tv-decode-cuda`` (CUDA only): batched nvJPEG ``decode_jpeg(list, device='cuda')``, then
  the same resize/normalise on the GPU and a stack; also reported decode-only.

CPU methods run single-threaded (``torch.set_num_threads(1)``) in the caller's process: the
numbers are per core.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
import torchvision
from PIL import Image

from bench.env import measure_rate
from core.model.card import ModelCard
from core.model.preprocess import ImageLimits, Preprocessor

LIMITS = ImageLimits(max_bytes=8 * 1024 * 1024, max_pixels=40_000_000)


class Normaliser:
    """uint8 CHW (any size) → resized (bilinear, antialias) normalised float CHW."""

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.size = card.input_size
        self.mean = torch.tensor(card.mean, device=device).view(3, 1, 1) * 255
        self.std = torch.tensor(card.std, device=device).view(3, 1, 1) * 255

    def __call__(self, img_u8: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(img_u8.unsqueeze(0).float(), size=(self.size, self.size),
                          mode="bilinear", antialias=True, align_corners=False)[0]
        return (x - self.mean) / self.std


Method = tuple[Callable[[bytes], object], Callable[[bytes], torch.Tensor]]


def cpu_methods(card: ModelCard) -> dict[str, Method]:
    """name → (decode only, decode + resize + normalise)."""
    full = Preprocessor(card, LIMITS, jpeg_draft=False)
    draft = Preprocessor(card, LIMITS, jpeg_draft=True)
    normalise = Normaliser(card, torch.device("cpu"))

    def tv_decode(data: bytes) -> torch.Tensor:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return torchvision.io.decode_jpeg(raw, mode=torchvision.io.ImageReadMode.RGB)

    return {"pillow": (full.decode, full), "pillow-draft": (draft.decode, draft),
            "tv-decode-cpu": (tv_decode, lambda data: normalise(tv_decode(data)))}


def draft_effect(images: list[bytes], input_size: int) -> dict[str, Any]:
    """How often draft mode actually shrinks the decode (it needs a side ≥ 2× the input)."""
    reduced = 0
    sides = []
    for data in images:
        img = Image.open(io.BytesIO(data))
        sides.append(min(img.size))
        before = img.size
        img.draft("RGB", (input_size, input_size))
        if img.size != before:
            reduced += 1
    sides.sort()
    return {"images": len(images), "draft_downscaled": reduced,
            "median_short_side_px": sides[len(sides) // 2] if sides else 0}


def measure_cpu(images: list[bytes], card: ModelCard, *, repeats: int,
                min_seconds: float) -> list[dict[str, Any]]:
    """Single-thread rate of each CPU method over the sample (median of repeats)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name, (decode, full) in cpu_methods(card).items():
            row: dict[str, Any] = {"method": name, "threads": 1}
            for stage, fn in (("decode_only", decode), ("images_per_s", full)):
                def step(fn: Callable[[bytes], object] = fn) -> int:
                    for data in images:
                        fn(data)
                    return len(images)
                rate = measure_rate(step, repeats=repeats, min_seconds=min_seconds)
                row[stage] = rate.as_dict()
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return rows


def measure_cuda(images: list[bytes], card: ModelCard, *, batch_sizes: list[int],
                 repeats: int, min_seconds: float) -> list[dict[str, Any]]:
    """Batched GPU decode: decode-only and decode+resize+normalise+stack, per batch size."""
    device = torch.device("cuda")
    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in images]
    normalise = Normaliser(card, device)
    rows = []
    for bs in batch_sizes:
        chunk = (raws * (-(-bs // len(raws))))[:bs]
        for stage in ("decode", "decode+resize"):
            def step(chunk: list[torch.Tensor] = chunk, stage: str = stage) -> int:
                decoded = torchvision.io.decode_jpeg(
                    chunk, mode=torchvision.io.ImageReadMode.RGB, device=device)
                if stage == "decode+resize":
                    torch.stack([normalise(img) for img in decoded])
                return len(chunk)
            try:
                step()  # nvJPEG handle and buffers
                rate = measure_rate(step, repeats=repeats, min_seconds=min_seconds,
                                    min_steps=2, sync=torch.cuda.synchronize)
                rows.append({"method": f"tv-decode-cuda ({stage})", "batch_size": bs,
                             "images_per_s": rate.as_dict()})
            except Exception as exc:  # noqa: BLE001 - reported as a result
                rows.append({"method": f"tv-decode-cuda ({stage})", "batch_size": bs,
                             "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows
