"""Forward passes that survive running out of memory (the infer threads' shared state).

A batch that runs out of memory is split in halves, down to single images, so that only an
image failing alone fails; later batches go straight to passes of the size that fitted, and
after ``REGROW_AFTER`` such passes the size is doubled again (the memory may have been taken
by something else for a while). With several inference streams the cap is shared: the memory
is the device's, not a stream's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from inference.compare import Prediction
from inference.retries import is_out_of_memory

log = logging.getLogger(__name__)

REGROW_AFTER = 100

Result = Prediction | Exception  # one image's forward-pass result
Infer = Callable[[torch.Tensor], list[Prediction]]


class SplittingForward:
    """``run(infer, batch)``: one result per image, in passes of at most ``cap`` images."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.cap: int | None = None  # None: the whole batch in one pass
        self._capped_passes = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Another model, another memory footprint: whole batches again."""
        with self._lock:
            self.cap, self._capped_passes = None, 0

    def run(self, infer: Infer, batch: torch.Tensor) -> list[Result]:
        size = int(batch.shape[0])
        cap = self.cap or size
        results: list[Result] = []
        for i in range(0, size, cap):
            results.extend(self._split(infer, batch[i:i + cap], splitting=False))
        with self._lock:
            if self.cap is not None and cap == self.cap:
                self._capped_passes += 1
                if self._capped_passes >= REGROW_AFTER:
                    grown = cap * 2 if cap * 2 < self.max_batch_size else None
                    self.cap, self._capped_passes = grown, 0
                    log.info("trying forward passes of up to %d images again",
                             grown or self.max_batch_size)
        return results

    def _split(self, infer: Infer, batch: torch.Tensor, *, splitting: bool) -> list[Result]:
        """Run ``batch``; out of memory (or any failure once splitting) splits it in halves."""
        size = int(batch.shape[0])
        try:
            return list(infer(batch))
        except Exception as exc:  # the model's failure; which images it concerns is below
            if size == 1 or not (splitting or is_out_of_memory(exc)):
                return [exc] * size
            if is_out_of_memory(exc):
                self._shrink(size, exc)
            half = size // 2
            return (self._split(infer, batch[:half], splitting=True)
                    + self._split(infer, batch[half:], splitting=True))

    def _shrink(self, size: int, exc: Exception) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give back what the failed pass held
        cap = size // 2
        with self._lock:
            if self.cap is None or cap < self.cap:
                log.warning("out of memory in a forward pass of %d images (%r): splitting it, "
                            "and passes of at most %d from now on", size, exc, cap)
                self.cap, self._capped_passes = cap, 0
