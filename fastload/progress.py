"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a log.

A bar redraws itself with carriage returns; written to a file or a CI log those pile up into one huge line.
When the stream is not a terminal, :func:`progress_bar` instead prints one line every ``interval`` seconds
and a last line when done.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any

LOG_INTERVAL_S = 10.0


def _format_count(n: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{n:,.0f} {unit}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f} {prefix}{unit}"
        n /= 1000
    return f"{n:.1f} P{unit}"


class LogProgress:
    """The subset of tqdm's interface fastload uses (``update``, ``set_postfix_str``, ``close``), printing
    ``desc: 1,234/5,000 rec (25%), 812 rec/s, <postfix>`` lines at most every ``interval`` seconds."""

    def __init__(self, total: float | None, desc: str, unit: str, unit_scale: bool = False,
                 file: IO[str] | None = None, interval: float = LOG_INTERVAL_S):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.file = file if file is not None else sys.stderr
        self.interval = interval
        self.n = 0.0
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> str:
        dt = max(time.monotonic() - self._t0, 1e-9)
        done = _format_count(self.n, self.unit, self.unit_scale)
        if self.total and self.unit_scale:
            done = f"{done} of {_format_count(self.total, self.unit, True)} ({self.n / self.total:.0%})"
        elif self.total:
            done = f"{self.n:,.0f}/{self.total:,.0f} {self.unit} ({self.n / self.total:.0%})"
        text = f"{self.desc}: {done}, {_format_count(self.n / dt, self.unit, self.unit_scale)}/s, {dt:.0f} s"
        return f"{text}, {self.postfix}" if self.postfix else text

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self._last = time.monotonic()

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: float | None, desc: str, unit: str = "it", unit_scale: bool = False,
                 file: IO[str] | None = None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on ``file`` (default stderr) if it is a terminal, else a :class:`LogProgress`."""
    file = file if file is not None else sys.stderr
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=file, **tqdm_kwargs)
    return LogProgress(total, desc, unit, unit_scale=unit_scale, file=file)
