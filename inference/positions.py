"""Where a record sits in Kafka: a partition and a position in it (pure, no client)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class TopicPartitionKey:
    """One partition of a topic (hashable, sortable; kafka-python's TopicPartition is not ours)."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, order=True)
class Position:
    """One record: ``topic[partition]@offset``, the way log lines name it."""

    topic: str
    partition: int
    offset: int

    @property
    def key(self) -> TopicPartitionKey:
        return TopicPartitionKey(self.topic, self.partition)

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"
