"""Batched count-preserving augmentation (``trainer.batchaug``): per image, only transforms that
keep every item, drawn independently for each image of the batch."""

from __future__ import annotations

import torch

from trainer.batchaug import augment_batch, colour, crop_resize, dihedral


def _dihedral_group(image: torch.Tensor) -> list[torch.Tensor]:
    views = []
    for flipped in (image, image.flip(2)):
        views += [flipped.rot90(k, (1, 2)) for k in range(4)]
    return views


def test_each_image_gets_one_of_its_own_eight_symmetries() -> None:
    torch.manual_seed(0)
    batch = torch.rand(64, 3, 8, 8)
    out = dihedral(batch)
    seen = set()
    for image, result in zip(batch, out, strict=True):
        matches = [i for i, v in enumerate(_dihedral_group(image)) if torch.equal(v, result)]
        assert matches, "an image became something other than a flip/turn of itself"
        seen.add(matches[0])
    assert len(seen) >= 6  # drawn per image, not once for the batch


def test_full_area_crop_is_the_identity_and_mild_crops_stay_close() -> None:
    torch.manual_seed(0)
    batch = torch.rand(4, 3, 16, 16)
    same = crop_resize(batch, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, batch, atol=1e-5)
    smaller = crop_resize(batch, 8)
    assert smaller.shape == (4, 3, 8, 8)
    # A crop keeping >= 85 % of the area: the mean of a smooth image moves little.
    ramp = torch.linspace(0, 1, 32).expand(2, 3, 32, 32).contiguous()
    assert (crop_resize(ramp, 32).mean((1, 2, 3)) - 0.5).abs().max() < 0.1


def test_colour_keeps_a_grey_image_grey_and_stays_in_range() -> None:
    torch.manual_seed(0)
    grey = torch.full((32, 3, 4, 4), 0.5)
    out = colour(grey)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)  # no colour appears
    assert out.min() >= 0.4 - 1e-6 and out.max() <= 0.6 + 1e-6  # brightness 0.8..1.2
    assert out[:, 0, 0, 0].unique().numel() > 16  # factors drawn per image
    vivid = torch.rand(8, 3, 4, 4)
    assert colour(vivid, strength=0.9).min() >= 0 and colour(vivid, strength=0.9).max() <= 1


def test_augment_batch_is_reproducible_from_the_generator_state() -> None:
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(7)
    a = augment_batch(images, 16)
    torch.manual_seed(7)
    b = augment_batch(images, 16)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)  # so a resumed run draws the same augmentations
