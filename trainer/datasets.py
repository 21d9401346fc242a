"""Lazily decoded training images, from local folders or straight from S3.

Nothing is decoded in the parent process and nothing is cached: each ``DataLoader`` worker
reads and decodes its own items, so memory does not grow with the dataset (535,234 ABID images
are as cheap to list as 1,000). Decoding is the serving path itself (:mod:`core.model.preprocess`)
under the run's decode policy, so training pixels are the pixels the worker will see.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from core.model.preprocess import decode_rgb, resize_uint8
from core.settings import S3Settings

_local = threading.local()


@dataclass(frozen=True)
class Decode:
    """How a training image becomes a uint8 tensor: the model card's size and decode policy."""

    size: int
    policy: Literal["full", "draft"] = "full"


def _s3_client(cfg: S3Settings | None) -> Any:
    # One client per process (DataLoader workers are forked or spawned): botocore clients must
    # not cross a fork. Keys left unset use botocore's default credential chain.
    client = getattr(_local, "client", None)
    if client is None or getattr(_local, "pid", None) != os.getpid():
        import boto3

        kwargs: dict[str, Any] = {}
        if cfg is not None:
            kwargs = {"endpoint_url": cfg.endpoint_url, "region_name": cfg.region}
            if cfg.access_key_id is not None and cfg.secret_access_key is not None:
                kwargs["aws_access_key_id"] = cfg.access_key_id.get_secret_value()
                kwargs["aws_secret_access_key"] = cfg.secret_access_key.get_secret_value()
        client = boto3.client("s3", **kwargs)
        _local.client, _local.pid = client, os.getpid()
    return client


def read_bytes(path: str, s3: S3Settings | None = None) -> bytes:
    """A local file or an ``s3://bucket/key`` object, read whole."""
    if path.startswith("s3://"):
        bucket, _, key = path[5:].partition("/")
        body = _s3_client(s3).get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()
    with open(path, "rb") as fh:
        return fh.read()


Augment = Literal["none", "hflip", "count"]


def augmentation(policy: Augment, size: int) -> v2.Transform | None:
    """``hflip``: the reference's RandomHorizontalFlip; ``count``: see
    :func:`count_preserving_augment`; ``none`` for evaluation."""
    if policy == "none":
        return None
    if policy == "hflip":
        return v2.RandomHorizontalFlip()
    return count_preserving_augment(size)


def list_object_sizes(cfg: S3Settings, bucket: str, prefix: str) -> dict[str, int]:
    """key -> size of every object under ``prefix`` (one paged listing, no downloads)."""
    paginator = _s3_client(cfg).get_paginator("list_objects_v2")
    return {obj["Key"]: int(obj["Size"])
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])}


def count_preserving_augment(size: int) -> v2.Transform:
    """Flips, 90-degree turns, a mild crop and mild colour: none adds or removes an item.

    (Crops stay mild — at least 85 % of the area — so items at the border are kept.)
    """
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
        v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ])


class CountingImages(Dataset[tuple[torch.Tensor, int]]):
    """(image path or s3 URI, class index) pairs -> (uint8 CHW tensor, class index)."""

    def __init__(self, items: Sequence[tuple[str, int]], decode: Decode, *,
                 augment: Augment = "none", s3: S3Settings | None = None) -> None:
        self.items = list(items)
        self.decode = decode
        self.s3 = s3
        self.augment = augmentation(augment, decode.size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(io.BytesIO(read_bytes(path, self.s3))) as img:
            rgb = decode_rgb(img, size=self.decode.size, draft=self.decode.policy == "draft")
            image = resize_uint8(rgb, self.decode.size)
        if self.augment is not None:
            image = self.augment(image)
        return image, label


def make_loader(dataset: Dataset[Any], *, batch_size: int, workers: int, pin_memory: bool,
                sampler: Sampler[Any] | None = None) -> DataLoader[Any]:
    """Workers decode in parallel and stay alive across epochs; a few batches are prefetched."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 4}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, **extra)
