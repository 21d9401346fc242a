"""Count-preserving augmentation of a whole batch in a few tensor operations.

The same family as ``trainer.datasets.count_preserving_augment`` (flips, 90-degree turns, a
mild crop keeping at least 85 % of the area, mild brightness/contrast/saturation), drawn per
image but applied to the batch at once, so that it runs where the batch is: on a GPU, the
per-image torchvision pipeline costs more Python and kernel launches than the network's step.
Random draws come from the default generator of the batch's device, which the trainer's
checkpoints save and restore.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right and/or top-bottom and turned by 0/90/180/270 degrees."""
    n, device = x.shape[0], x.device
    h = torch.rand(n, device=device) < 0.5
    v = torch.rand(n, device=device) < 0.5
    k = torch.randint(0, 4, (n,), device=device)
    x = torch.where(h[:, None, None, None], x.flip(3), x)
    x = torch.where(v[:, None, None, None], x.flip(2), x)
    if x.shape[-1] != x.shape[-2]:  # turns of a non-square image change its shape
        return x
    for turns in (1, 2, 3):
        x = torch.where((k == turns)[:, None, None, None], x.rot90(turns, (2, 3)), x)
    return x


def crop_resize(x: torch.Tensor, size: int, scale: tuple[float, float] = (0.85, 1.0),
                ratio: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """A random crop of each image (area fraction in ``scale``, aspect in ``ratio``), resampled
    to ``size`` in one ``grid_sample``."""
    n, device = x.shape[0], x.device
    area = _uniform(n, *scale, device)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), device))
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n, device=device) - 1)  # normalised centre inside the image
    cy = (1 - h) * (2 * torch.rand(n, device=device) - 1)
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour(x: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - strength, 1 + strength] per image,
    on [0, 1] floats."""
    n, device = x.shape[0], x.device
    b, c, s = (_uniform(n, 1 - strength, 1 + strength, device)[:, None, None, None]
               for _ in range(3))
    luma = torch.tensor(_LUMA, device=device, dtype=x.dtype)[None, :, None, None]
    x = (x * b).clamp(0, 1)
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    gray = (x * luma).sum(1, keepdim=True)
    return ((x - gray) * s + gray).clamp(0, 1)


def augment_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW -> augmented float NCHW in [0, 1] at ``size`` (not yet normalised)."""
    x = images.float().div_(255)
    return colour(crop_resize(dihedral(x), size))
