"""Dynamic micro-batching (pure: the clock is passed in, no threads, no I/O).

A batch closes when it holds ``max_size`` items or when its oldest item has waited
``max_wait_s``, whichever comes first — the policy of TorchServe's and Triton's batchers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPlan:
    """The batch size and deadline chosen for a backend (inference/autotune.py)."""

    max_batch_size: int
    max_wait_ms: int
    # Infer threads taking whole batches side by side (inference/pipeline.py).
    streams: int = 1


@dataclass
class MicroBatcher(Generic[T]):
    max_size: int
    max_wait_s: float
    _items: list[T] = field(default_factory=list)
    _opened_at: float | None = None

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float) -> list[T] | None:
        """Add ``item``; return the closed batch if this item filled it."""
        if not self._items:
            self._opened_at = now
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return self._take()
        return None

    def poll(self, now: float) -> list[T] | None:
        """Return the open batch if its deadline has passed."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return self._take()
        return None

    def deadline(self) -> float | None:
        """When the open batch must close, or None when nothing is waiting."""
        if self._opened_at is None:
            return None
        return self._opened_at + self.max_wait_s

    def flush(self) -> list[T] | None:
        """Close the open batch now (drain on revoke/shutdown)."""
        return self._take() if self._items else None

    def _take(self) -> list[T]:
        batch, self._items, self._opened_at = self._items, [], None
        return batch
