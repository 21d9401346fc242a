from inference.positions import TopicPartitionKey
from worker.offsets import OffsetTracker

TP = TopicPartitionKey("t", 0)
TP1 = TopicPartitionKey("t", 1)


def test_commit_never_passes_an_unfinished_offset() -> None:
    tr = OffsetTracker()
    for off in (10, 11, 12):
        tr.started(TP, off)
    tr.finished(TP, 12)
    tr.finished(TP, 11)
    assert tr.committable() == {TP: 10}
    tr.finished(TP, 10)
    assert tr.committable() == {TP: 13}


def test_committed_positions_are_not_repeated() -> None:
    tr = OffsetTracker()
    tr.started(TP, 0)
    tr.finished(TP, 0)
    tr.mark_committed(tr.committable())
    assert tr.committable() == {}
    tr.started(TP, 1)
    assert tr.committable() == {}  # position 1 == committed 1
    tr.finished(TP, 1)
    assert tr.committable() == {TP: 2}


def test_partitions_are_independent_and_forgettable() -> None:
    tr = OffsetTracker()
    tr.started(TP, 5)
    tr.started(TP1, 7)
    tr.finished(TP1, 7)
    assert tr.committable() == {TP: 5, TP1: 8}
    assert tr.in_flight() == 1
    tr.forget([TP])
    tr.finished(TP, 5)  # late finish of a revoked partition is ignored
    assert tr.committable() == {TP1: 8}
    assert tr.in_flight() == 0


def test_a_partition_handed_back_keeps_its_in_flight_offsets() -> None:
    """A rebalance that hands a partition back to the same member keeps the consumer's fetch
    position, so its in-flight offsets must stay pending (found by tests/reliability)."""
    tr = OffsetTracker()
    for off in (0, 1, 2):
        tr.started(TP, off)
    tr.started(TP1, 0)
    tr.detach([TP, TP1])
    assert tr.committable() == {}  # not ours to commit while the group rebalances
    tr.reattach([TP])  # TP1 went elsewhere
    assert tr.in_flight() == 3
    tr.started(TP, 3)  # fetching continues after the kept position
    tr.finished(TP, 3)
    assert tr.committable() == {TP: 0}
    for off in (0, 1, 2):
        tr.finished(TP, off)
    assert tr.committable() == {TP: 4}
    assert tr.in_flight() == 0


def test_records_finishing_during_a_rebalance_count_when_the_partition_comes_back() -> None:
    """The join can take seconds (waiting out a dead member's session) while the pipeline
    keeps finishing records of the revoked partitions. Those finishes must not be dropped, or
    the offsets stay "in flight" forever once the partition comes back: the worker then sat
    paused at max_in_flight with its lag frozen (found by tests/reliability)."""
    tr = OffsetTracker()
    for off in (0, 1, 2):
        tr.started(TP, off)
    tr.started(TP1, 0)
    tr.detach([TP, TP1])
    assert tr.in_flight() == 4  # still in the pipeline
    for off in (0, 1, 2):
        tr.finished(TP, off)
    tr.finished(TP1, 0)
    tr.reattach([TP, TP1])
    assert tr.in_flight() == 0
    assert tr.committable() == {TP: 3, TP1: 1}


def test_a_partition_not_handed_back_is_dropped() -> None:
    tr = OffsetTracker()
    tr.started(TP, 0)
    tr.detach([TP])
    tr.reattach([])
    assert tr.in_flight() == 0
    tr.finished(TP, 0)  # a late finish after the partition moved is ignored
    assert tr.committable() == {}
