"""Offset tracking for at-least-once delivery (pure).

Records finish out of order (fetches and batches overlap), but Kafka commits one position per
partition. The committable position is the lowest offset still in flight, or one past the
highest finished offset when nothing is in flight: a commit never passes an unwritten row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.positions import TopicPartitionKey


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    max_done: int = -1
    committed: int | None = None


@dataclass
class OffsetTracker:
    _parts: dict[TopicPartitionKey, _PartitionState] = field(default_factory=dict)
    # Partitions revoked by a rebalance still in progress: not committable, but their records
    # still finish (the join can take seconds), and the state comes back if they do.
    _detached: dict[TopicPartitionKey, _PartitionState] = field(default_factory=dict)

    def started(self, tp: TopicPartitionKey, offset: int) -> None:
        """A record was taken from Kafka and is now in flight."""
        self._parts.setdefault(tp, _PartitionState()).pending.add(offset)

    def finished(self, tp: TopicPartitionKey, offset: int) -> None:
        """The record's rows are durable (or it was dead-lettered durably)."""
        state = self._parts.get(tp)
        if state is None:
            state = self._detached.get(tp)
        if state is None or offset not in state.pending:
            return  # partition revoked meanwhile; the new owner re-processes idempotently
        state.pending.discard(offset)
        state.max_done = max(state.max_done, offset)

    def in_flight(self) -> int:
        """Records taken and not yet durable, detached partitions included (they still
        occupy the pipeline)."""
        return sum(len(s.pending) for s in (*self._parts.values(), *self._detached.values()))

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

    def detach(self, partitions: list[TopicPartitionKey]) -> None:
        """A rebalance revoked these partitions: stop committing them until :meth:`reattach`
        says whether they came back."""
        for tp in partitions:
            if tp in self._parts:
                self._detached[tp] = self._parts.pop(tp)

    def reattach(self, assigned: list[TopicPartitionKey]) -> None:
        """The rebalance finished. Partitions handed back to this member keep their state:
        the consumer keeps their fetch position, so offsets still in flight must stay pending
        (and those that finished meanwhile count as done). The rest are dropped: their new
        owner re-processes from the committed offset, and our late rows are idempotent."""
        for tp in assigned:
            if tp in self._detached:
                self._parts[tp] = self._detached[tp]
        self._detached = {}

    def forget(self, partitions: list[TopicPartitionKey]) -> None:
        """Drop state of revoked partitions."""
        for tp in partitions:
            self._parts.pop(tp, None)
            self._detached.pop(tp, None)
