"""The one preprocessing path: untrusted bytes -> the tensor the model was trained on.

Trainer, evaluation, worker, replay and serve all call :class:`Preprocessor` (or
:func:`eval_transform` on an already decoded image), so the model is never served pixels it
did not see in validation. Safe on untrusted bytes: the pixel and byte limits are checked from
the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from core.model.card import ModelCard
from core.settings import WorkerSettings
from schemas.records import ErrorKind, EventError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, worker: WorkerSettings) -> ImageLimits:
        return cls(worker.max_image_bytes, worker.max_image_pixels)



def eval_transform(card: ModelCard) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """PIL image -> normalised CHW float tensor, exactly as the model saw in validation."""
    size = card.input_size
    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(card.mean, card.std),
    ])


class Preprocessor:
    """Bytes → normalised CHW float tensor, or an EventError naming what is wrong."""

    def __init__(self, card: ModelCard, limits: ImageLimits, *,
                 jpeg_draft: bool | None = None) -> None:
        self.card = card
        self.limits = limits
        # The card's policy unless a benchmark asks for the other one explicitly.
        self.jpeg_draft = card.decode == "draft" if jpeg_draft is None else jpeg_draft
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
