from worker.offsets import OffsetTracker, TopicPartitionKey

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
