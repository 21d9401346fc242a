"""One epoch of training and one pass of evaluation (no I/O, no process-group logic)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from core.model.preprocess import normalize

PHASES = ("data", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class Preprocess:
    """uint8 batches -> normalised float on the device (what ToTensor + Normalize do)."""

    device: torch.device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels_last: bool = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # The serving path's normalisation (core.model.preprocess), on the training device.
        x = normalize(images.to(self.device, non_blocking=True), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class PassStats:
    """Sums of one pass over this rank's shard (all-reduce them to get global numbers)."""

    loss_sum: float = 0.0
    correct: int = 0
    n: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    steps: list[dict[str, float]] = field(default_factory=list)  # per step: phase -> seconds

    def sums(self) -> dict[str, float]:
        return {"loss_sum": self.loss_sum, "correct": float(self.correct), "n": float(self.n)}


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    # bf16 autocast on CUDA only: on CPU it is slower and less accurate for these convs.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _timed(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
           ) -> Iterator[tuple[float, tuple[torch.Tensor, torch.Tensor]]]:
    """Yield (seconds spent fetching, batch) for each batch."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        with record_function("data_loading"):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield time.perf_counter() - start, batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    preprocess: Preprocess,
    frozen: Sequence[nn.Module] = (),
    step_hook: Callable[[], None] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> PassStats:
    """Train over ``loader`` once; ``progress(batch_size, loss, img_per_s)`` after each step.

    ``frozen`` blocks stay in eval mode (their batch-norm statistics are not updated).
    """
    model.train()
    for block in frozen:
        block.eval()
    stats = PassStats()
    device = preprocess.device
    epoch_start = time.perf_counter()
    for data_s, (images, labels) in _timed(loader):
        t0 = time.perf_counter()
        with record_function("forward"):
            x, y = preprocess(images), labels.to(device, non_blocking=True)
            with _autocast(device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
        _sync(device)
        t1 = time.perf_counter()
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        with record_function("optimizer"):
            optimizer.step()
        _sync(device)
        t3 = time.perf_counter()
        batch = int(y.shape[0])
        stats.loss_sum += float(loss.detach()) * batch
        stats.correct += int((logits.detach().argmax(1) == y).sum())
        stats.n += batch
        phases = dict(zip(PHASES, (data_s, t1 - t0, t2 - t1, t3 - t2), strict=True))
        for phase, seconds in phases.items():
            stats.phase_seconds[phase] += seconds
        step = data_s + t3 - t0
        stats.steps.append(phases)
        if progress is not None:
            progress(batch, float(loss.detach()), batch / step if step > 0 else 0.0)
        if step_hook is not None:
            step_hook()
    stats.seconds = time.perf_counter() - epoch_start
    return stats


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    preprocess: Preprocess,
) -> tuple[PassStats, list[int], list[int]]:
    """Loss/accuracy sums plus (true class indices, predicted class indices) of this shard."""
    model.eval()
    stats = PassStats()
    y_true: list[int] = []
    y_pred: list[int] = []
    start = time.perf_counter()
    for _, (images, labels) in _timed(loader):
        x, y = preprocess(images), labels.to(preprocess.device)
        with _autocast(preprocess.device):
            logits = model(x).float()
        pred = logits.argmax(1)
        stats.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        stats.correct += int((pred == y).sum())
        stats.n += int(y.shape[0])
        y_true.extend(y.tolist())
        y_pred.extend(pred.tolist())
    stats.seconds = time.perf_counter() - start
    return stats, y_true, y_pred
