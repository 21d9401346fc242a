"""Does a backend compute what the eager model computes? Probabilities compared row by row.

Used by ``binaudit model export`` (on the real sample images) and by autotuning (on a seeded
random batch) before a backend may serve.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from inference.backends.base import Backend

# fp32 backends (ONNX Runtime, OpenVINO f32, inductor) differ from eager PyTorch by float
# rounding only: measured ~1e-6 on probabilities. Reduced-precision GPU engines (bf16
# autocast, TensorRT fp16) get a looser bound.
FP32_TOLERANCE = 1e-3
REDUCED_PRECISION_TOLERANCE = 2e-2


def tolerance_for(device: torch.device) -> float:
    """The max |Δprob| allowed on ``device`` (GPU backends run in bf16/fp16)."""
    return REDUCED_PRECISION_TOLERANCE if device.type == "cuda" else FP32_TOLERANCE


@dataclass(frozen=True)
class ParityReport:
    """Backend vs eager fp32 on the same inputs."""

    backend: str
    images: int
    max_abs_diff_prob: float
    argmax_agree: int
    # Disagreements where the reference's top two classes are within the tolerance: a tie,
    # not an error (random-init models have near-uniform outputs).
    argmax_ties: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return (self.max_abs_diff_prob <= self.tolerance
                and self.argmax_agree + self.argmax_ties == self.images)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def describe(self) -> str:
        return (f"{self.backend}: max |Δprob| {self.max_abs_diff_prob:.2e} (tolerance "
                f"{self.tolerance:.0e}), same argmax on {self.argmax_agree}/{self.images}"
                + (f" (+{self.argmax_ties} ties)" if self.argmax_ties else ""))


def compare_logits(backend: str, reference: torch.Tensor, candidate: torch.Tensor,
                   tolerance: float) -> ParityReport:
    """Compare two logit matrices (same rows) as softmax probabilities."""
    ref = torch.softmax(reference.float().cpu(), dim=1)
    cand = torch.softmax(candidate.float().cpu(), dim=1)
    diff = float((ref - cand).abs().max()) if ref.numel() else 0.0
    same = ref.argmax(dim=1) == cand.argmax(dim=1)
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    gap = top2[:, 0] - top2[:, -1]
    ties = int(((~same) & (gap <= tolerance)).sum())
    return ParityReport(backend, int(ref.shape[0]), diff, int(same.sum()), ties, tolerance)


def reference_logits(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The eager fp32 CPU logits: the reference every backend is held to."""
    model = copy.deepcopy(model).float().cpu().eval()  # never move the caller's model
    with torch.inference_mode():
        return torch.cat([model(b) for b in batches])


def backend_logits(backend: Backend, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The backend's logits for the same batches, on the host."""
    with torch.inference_mode():
        return torch.cat([backend.logits(b).float().cpu() for b in batches])
