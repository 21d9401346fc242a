"""Progress for long work: a tqdm bar on a terminal, plain periodic log lines otherwise.

A bar redraws with carriage returns, which in a non-interactive log (CI, a supervisor's
journal, ``nohup``) becomes hundreds of frames. When stderr is not a TTY the same calls write
one line every ``every_s`` seconds and one at the end, through ``logging``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Protocol

log = logging.getLogger("binaudit.progress")

PLAIN_EVERY_S = 10.0


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def set_postfix(self, **kwargs: Any) -> Any: ...

    def close(self) -> Any: ...


class PlainProgress:
    """tqdm's small interface (update, set_postfix[_str], close) as periodic log lines."""

    def __init__(self, *, total: int | None, desc: str, unit: str, disable: bool = False,
                 every_s: float = PLAIN_EVERY_S) -> None:
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.every_s = every_s
        self.n = 0
        self.postfix = ""
        self._started = self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line(done=True)

    def line(self, *, done: bool = False) -> str:
        """The text of one progress line (what :meth:`_line` logs)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        state = "done" if done else "progress"
        return (f"{self.desc}: {state} {self.n}{of} {self.unit} in {elapsed:.0f}s "
                f"({self.n / elapsed:.1f} {self.unit}/s{extra})")

    def _line(self, *, done: bool = False) -> None:
        if not self.disable:
            log.info(self.line(done=done))


def progress(*, total: int | None, desc: str, unit: str, disable: bool = False,
             leave: bool = True) -> Progress:
    """A tqdm bar when stderr is a terminal, else :class:`PlainProgress`."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar: Progress = tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=leave)
        return bar
    return PlainProgress(total=total, desc=desc, unit=unit, disable=disable)
