"""Offset tracking for at-least-once delivery (pure).

Records finish out of order (fetches and batches overlap), but Kafka commits one position per
partition. The committable position is the lowest offset still in flight, or one past the
highest finished offset when nothing is in flight: a commit never passes an unwritten row.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class TopicPartitionKey:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    max_done: int = -1
    committed: int | None = None


@dataclass
class OffsetTracker:
    _parts: dict[TopicPartitionKey, _PartitionState] = field(default_factory=dict)

    def started(self, tp: TopicPartitionKey, offset: int) -> None:
        """A record was taken from Kafka and is now in flight."""
        self._parts.setdefault(tp, _PartitionState()).pending.add(offset)

    def finished(self, tp: TopicPartitionKey, offset: int) -> None:
        """The record's rows are durable (or it was dead-lettered durably)."""
        state = self._parts.get(tp)
        if state is None or offset not in state.pending:
            return  # partition revoked meanwhile; the new owner re-processes idempotently
        state.pending.discard(offset)
        state.max_done = max(state.max_done, offset)

    def in_flight(self) -> int:
        return sum(len(s.pending) for s in self._parts.values())

    def committable(self) -> dict[TopicPartitionKey, int]:
        """Next offsets that may be committed and were not committed yet."""
        out: dict[TopicPartitionKey, int] = {}
        for tp, state in self._parts.items():
            if state.pending:
                position = min(state.pending)
            elif state.max_done >= 0:
                position = state.max_done + 1
            else:
                continue
            if state.committed is None or position > state.committed:
                out[tp] = position
        return out

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        for tp, position in offsets.items():
            if tp in self._parts:
                self._parts[tp].committed = position

    def detach(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, object]:
        """Remove and return the state of revoked partitions (see :meth:`reattach`)."""
        return {tp: self._parts.pop(tp) for tp in partitions if tp in self._parts}

    def reattach(self, states: dict[TopicPartitionKey, object]) -> None:
        """Give back the state of partitions a rebalance handed back to this member: the
        consumer keeps their fetch position, so their in-flight offsets must stay pending."""
        for tp, state in states.items():
            assert isinstance(state, _PartitionState)
            self._parts[tp] = state

    def forget(self, partitions: list[TopicPartitionKey]) -> None:
        """Drop state of revoked partitions."""
        for tp in partitions:
            self._parts.pop(tp, None)
