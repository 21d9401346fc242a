"""Per-event retry budget for errors that may pass (shared by the worker and replay)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.positions import Position

MAX_RETRYABLE_ATTEMPTS = 3


@dataclass
class RetryBudget:
    """Counts failed attempts per record; the budget ends in one dead letter (or error row),
    so a poison event cannot hold its partition back for ever."""

    max_attempts: int = MAX_RETRYABLE_ATTEMPTS
    _attempts: dict[Position, int] = field(default_factory=dict)

    def failed(self, position: Position) -> int:
        """Record one more failed attempt and return how many there have been."""
        attempts = self._attempts.get(position, 0) + 1
        self._attempts[position] = attempts
        return attempts

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def forget(self, position: Position) -> None:
        """The record is finished (written or dead-lettered): drop its count."""
        self._attempts.pop(position, None)
