import pytest

from inference.batching import MicroBatcher


def test_closes_at_max_size() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_size=3, max_wait_s=10)
    assert b.add(1, now=0.0) is None
    assert b.add(2, now=0.1) is None
    assert b.add(3, now=0.2) == [1, 2, 3]
    assert len(b) == 0 and b.deadline() is None


def test_closes_at_deadline_of_oldest_item() -> None:
    b: MicroBatcher[str] = MicroBatcher(max_size=8, max_wait_s=0.05)
    b.add("a", now=1.0)
    b.add("b", now=1.04)
    assert b.deadline() == pytest.approx(1.05)
    assert b.poll(now=1.049) is None
    assert b.poll(now=1.05) == ["a", "b"]
    assert b.poll(now=2.0) is None


@pytest.mark.parametrize(("size", "n", "expected_batches"), [
    (1, 3, [[0], [1], [2]]),
    (2, 5, [[0, 1], [2, 3]]),
    (4, 3, []),
])
def test_size_policy_table(size: int, n: int, expected_batches: list[list[int]]) -> None:
    b: MicroBatcher[int] = MicroBatcher(max_size=size, max_wait_s=1.0)
    closed = [batch for i in range(n) if (batch := b.add(i, now=0.0))]
    assert closed == expected_batches


def test_flush_returns_partial_batch_once() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_size=4, max_wait_s=1.0)
    b.add(7, now=0.0)
    assert b.flush() == [7]
    assert b.flush() is None


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(max_size=0, max_wait_s=1.0)
