"""Splitting one backtest run over N processes, and how far each partition got (pure).

A run id is shared by every process of a run. Each process takes a share of the topic's
partitions -- explicit ranges (``--partitions 0-5,9``) or a worker index of a count
(``--shard i/N``: partitions i, i+N, i+2N, ...) -- so N processes with shards 0/N .. N-1/N
cover every partition exactly once. Overlaps (a restart, a mistaken range) are harmless:
result rows are unique per run and position, and inserts ignore duplicates.

:class:`PartitionProgress` is the replay's checkpoint: per partition, the offset below which
every record has a durable row (or was skipped as outside the time window). Records finish
out of order, so it is the lowest offset still without a row, like the worker's committable
offset; it is written in the same transaction as the rows, so a restart resumes there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def parse_partitions(spec: str) -> frozenset[int]:
    """``"0-5"``, ``"3"``, ``"0-2,7,9-10"`` → the partitions named (ranges inclusive)."""
    out: set[int] = set()
    try:
        for part in spec.split(","):
            low, dash, high = part.strip().partition("-")
            first, last = int(low), int(high) if dash else int(low)
            if first < 0 or last < first:
                raise ValueError
            out.update(range(first, last + 1))
    except ValueError as exc:
        raise ValueError(f"partitions must be P or P-Q,... with 0 <= P <= Q (got {spec!r})"
                         ) from exc
    return frozenset(out)


def parse_shard(spec: str) -> tuple[int, int]:
    """``"1/4"`` → (1, 4): worker 1 of 4 (0-based, as a Kubernetes Indexed Job counts)."""
    try:
        index, slash, count = spec.strip().partition("/")
        i, n = int(index), int(count)
        if not slash or n < 1 or not 0 <= i < n:
            raise ValueError
    except ValueError as exc:
        raise ValueError(f"shard must be I/N with 0 <= I < N (got {spec!r})") from exc
    return i, n


@dataclass(frozen=True)
class PartitionSelection:
    """Which partitions of the topic one process replays: all, a shard, or explicit ones."""

    partitions: frozenset[int] | None = None
    shard: tuple[int, int] | None = None

    @classmethod
    def from_cli(cls, *, partitions: str | None = None, shard: str | None = None
                 ) -> PartitionSelection:
        if partitions is not None and shard is not None:
            raise ValueError("give --partitions or --shard, not both")
        return cls(partitions=None if partitions is None else parse_partitions(partitions),
                   shard=None if shard is None else parse_shard(shard))

    def select(self, available: Iterable[int]) -> list[int]:
        """This process's partitions among the topic's (sorted). Explicit partitions the
        topic does not have are an error: a typo would otherwise leave a gap unnoticed."""
        topic = sorted(set(available))
        if self.partitions is not None:
            unknown = sorted(self.partitions - set(topic))
            if unknown:
                raise ValueError(f"the topic has no partition {unknown} "
                                 f"(it has {len(topic)}: 0..{len(topic) - 1})")
            return sorted(self.partitions)
        if self.shard is not None:
            index, count = self.shard
            return [p for p in topic if p % count == index]
        return topic

    @property
    def label(self) -> str:
        if self.shard is not None:
            return f"shard {self.shard[0]}/{self.shard[1]}"
        if self.partitions is not None:
            return f"partitions {format_partitions(self.partitions)}"
        return "all partitions"


def format_partitions(partitions: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2,5,7-8"`` (what ``parse_partitions`` reads)."""
    runs: list[list[int]] = []
    for p in sorted(set(partitions)):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass
class PartitionProgress:
    """Per partition: offsets read and still without a durable row, and how far reading got."""

    _pending: dict[int, set[int]] = field(default_factory=dict)
    _read_to: dict[int, int] = field(default_factory=dict)

    def taken(self, partition: int, offset: int) -> None:
        """A record was read and will get a row."""
        self._pending.setdefault(partition, set()).add(offset)
        self._advance(partition, offset)

    def passed(self, partition: int, offset: int) -> None:
        """A record was read and gets no row (outside the time window)."""
        self._advance(partition, offset)

    def written(self, positions: Sequence[tuple[int, int]]) -> dict[int, int]:
        """Rows of these (partition, offset) are being written: the checkpoints to store with
        them, in the same transaction."""
        for partition, offset in positions:
            self._pending.get(partition, set()).discard(offset)
        return self.checkpoints()

    def checkpoints(self) -> dict[int, int]:
        """Per partition read so far: every offset below it has a row or needs none."""
        return {p: min(self._pending.get(p) or {read_to}) for p, read_to in self._read_to.items()}

    def _advance(self, partition: int, offset: int) -> None:
        self._read_to[partition] = max(self._read_to.get(partition, 0), offset + 1)
