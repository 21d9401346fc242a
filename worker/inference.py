"""The counter: load → preprocess → inference → postprocess (TorchServe's handler split).

Shared by the worker, replay and the HTTP endpoint; batching lives outside (worker/batching.py).
Preprocessing is safe on untrusted bytes: the pixel and byte limits are checked from the header
before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError

from schemas.records import ErrorKind, EventError
from trainer.model import ModelCard, eval_transform, load_artifact
from worker.compare import Prediction, prediction_from_probs

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def resolve_device(requested: Device) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda requested but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


class Preprocessor:
    """Bytes → normalised CHW float tensor, or an EventError naming what is wrong."""

    def __init__(self, card: ModelCard, limits: ImageLimits, *, jpeg_draft: bool = True) -> None:
        self.card = card
        self.limits = limits
        self.jpeg_draft = jpeg_draft
        self._transform: Callable[[Image.Image], torch.Tensor] = eval_transform(card)

    def __call__(self, data: bytes) -> torch.Tensor:
        return self._transform(self.decode(data))

    def decode(self, data: bytes) -> Image.Image:
        if not data:
            raise EventError(ErrorKind.EMPTY_OBJECT, "image object is empty (0 bytes)")
        if len(data) > self.limits.max_bytes:
            raise EventError(ErrorKind.OBJECT_TOO_LARGE,
                             f"image is {len(data)} bytes, limit {self.limits.max_bytes}")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise EventError(ErrorKind.NOT_AN_IMAGE, f"not a decodable image: {exc}") from exc
        except Image.DecompressionBombError as exc:
            raise EventError(ErrorKind.IMAGE_TOO_MANY_PIXELS, str(exc)) from exc
        width, height = img.size
        if width * height > self.limits.max_pixels:
            raise EventError(ErrorKind.IMAGE_TOO_MANY_PIXELS,
                             f"image is {width}x{height} = {width * height} pixels, "
                             f"limit {self.limits.max_pixels}")
        if self.jpeg_draft and img.format == "JPEG":
            # DCT-domain downscale: decodes only what Resize would keep.
            img.draft("RGB", (self.card.input_size, self.card.input_size))
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            kind = ErrorKind.TRUNCATED_IMAGE if "truncated" in str(exc).lower() \
                else ErrorKind.DECODE_ERROR
            raise EventError(kind, f"{img.format or 'image'} decode failed: {exc}") from exc
        return img.convert("RGB")


class Counter:
    """An artifact loaded for inference on one device."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, device: torch.device,
                 *, channels_last: bool | None = None) -> None:
        self.card = card
        self.device = device
        self.is_cuda = device.type == "cuda"
        # channels_last won on both devices in bench/ (CPU: 1.27x fp32 NCHW for B4 at batch 16).
        self.channels_last = True if channels_last is None else channels_last
        model = model.to(device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    @classmethod
    def from_artifact(cls, path: Path, device: Device = "auto",
                      *, channels_last: bool | None = None) -> Counter:
        """Load with the one shared loader; ArtifactError explains a missing/mismatched one."""
        dev = resolve_device(device)
        model, card = load_artifact(path, map_location="cpu")
        log.info("loaded model %s (%s, classes %s, input %d) on %s", card.version,
                 card.architecture, card.class_counts, card.input_size, dev)
        return cls(model, card, dev, channels_last=channels_last)

    @property
    def version(self) -> str:
        return self.card.version

    def warm_up(self, batch_sizes: Sequence[int] = (1, 8)) -> float:
        """Run a few dummy batches so the first real batch pays no allocation/tuning cost."""
        started = time.perf_counter()
        side = self.card.input_size
        for size in batch_sizes:
            self.infer(torch.zeros(size, 3, side, side))
        return time.perf_counter() - started

    def infer(self, batch: torch.Tensor) -> list[Prediction]:
        """Forward one stacked batch; one Prediction per row, in order."""
        with torch.inference_mode():
            if self.is_cuda:
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                enabled=self.is_cuda):
                logits = self.model(batch)
            logits = logits.float()
            probs = torch.softmax(logits, dim=1).cpu().tolist()
            scores = logits.cpu().tolist()
        return [prediction_from_probs(p, s, self.card.class_counts)
                for p, s in zip(probs, scores, strict=True)]
