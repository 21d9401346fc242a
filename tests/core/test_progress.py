"""Progress off a terminal is plain log lines, never carriage-return frames."""

from __future__ import annotations

import logging

import pytest

from core.progress import PlainProgress, progress


def test_not_a_tty_gives_plain_lines(capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="binaudit.progress")
    bar = progress(total=100, desc="publish t", unit="ev")  # pytest's stderr is not a TTY
    assert isinstance(bar, PlainProgress)
    bar.every_s = 0.0
    for _ in range(3):
        bar.update(10)
    bar.set_postfix_str("1.0 MB")
    bar.close()
    bar.close()  # idempotent
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[-1].startswith("publish t: done 30/100 ev in") and "1.0 MB" in lines[-1]
    assert "\r" not in capsys.readouterr().err


def test_lines_are_periodic_not_per_update(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="binaudit.progress")
    bar = PlainProgress(total=None, desc="fetch", unit="img", every_s=3600)
    for _ in range(1000):
        bar.update()
    assert caplog.records == []
    bar.close()
    assert len(caplog.records) == 1 and "done 1000 img" in caplog.records[0].getMessage()
