"""The one preprocessing path: untrusted bytes -> the tensor the model was trained on.

Trainer, evaluation, worker, replay and serve all go through :func:`decode_rgb` ->
:func:`resize_uint8` -> :func:`normalize` (the worker via :class:`Preprocessor`, the trainer's
datasets via :func:`load_uint8` / :meth:`Preprocessor.uint8`), under the decode policy and
input size of the model card, so the model is never served pixels it did not see in
validation. Safe on untrusted bytes: the pixel and byte limits are checked from the header
before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.model.card import ModelCard
from core.settings import InferenceSettings
from schemas.records import ErrorKind, EventError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, inference: InferenceSettings) -> ImageLimits:
        return cls(inference.max_image_bytes, inference.max_image_pixels)



def decode_rgb(img: Image.Image, *, size: int, draft: bool) -> Image.Image:
    """Decode an opened image to RGB under the card's decode policy.

    ``draft`` lets libjpeg downscale in the DCT domain to no less than ``size`` (faster; the
    pixels differ from a full decode, so training must use the same policy).
    """
    if draft and img.format == "JPEG":
        img.draft("RGB", (size, size))
    img.load()
    return img.convert("RGB")


def resize_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> uint8 CHW ``size``x``size`` (squashed, PIL bilinear with antialiasing).

    Squashing rather than cropping: many public ABID copies exist only squashed to 224x224,
    so full-size originals are fed the same way.
    """
    resized = img.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy())


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N)CHW -> float normalised like torchvision's ToTensor + Normalize."""
    x = images.float().div_(255.0)
    shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
    m = torch.tensor(tuple(mean), dtype=x.dtype, device=x.device).view(shape)
    sd = torch.tensor(tuple(std), dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / sd


def load_uint8(path: str | Path, card: ModelCard) -> torch.Tensor:
    """A local image file -> the uint8 tensor the model would see (trainer, evaluate)."""
    with Image.open(path) as img:
        return resize_uint8(decode_rgb(img, size=card.input_size,
                                       draft=card.decode == "draft"), card.input_size)


class Preprocessor:
    """Bytes → normalised CHW float tensor, or an EventError naming what is wrong."""

    def __init__(self, card: ModelCard, limits: ImageLimits, *,
                 jpeg_draft: bool | None = None) -> None:
        self.card = card
        self.limits = limits
        # The card's policy unless a benchmark asks for the other one explicitly.
        self.jpeg_draft = card.decode == "draft" if jpeg_draft is None else jpeg_draft

    def __call__(self, data: bytes) -> torch.Tensor:
        """Untrusted bytes -> normalised float CHW tensor (the model's input)."""
        return normalize(self.uint8(data), self.card.mean, self.card.std)

    def uint8(self, data: bytes) -> torch.Tensor:
        """Untrusted bytes -> uint8 CHW at the card's input size (what the trainer feeds)."""
        return resize_uint8(self.decode(data), self.card.input_size)

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
        try:
            return decode_rgb(img, size=self.card.input_size, draft=self.jpeg_draft)
        except (OSError, SyntaxError, ValueError) as exc:
            kind = ErrorKind.TRUNCATED_IMAGE if "truncated" in str(exc).lower() \
                else ErrorKind.DECODE_ERROR
            raise EventError(kind, f"{img.format or 'image'} decode failed: {exc}") from exc
