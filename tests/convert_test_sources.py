"""Conversion sources that misbehave on purpose, importable by Ray workers and local workers alike."""
from __future__ import annotations

import os
import time
from pathlib import Path

from fastload.conversion import ImageFolderSource


class CrashingSource(ImageFolderSource):
    """An ImageFolder whose process dies (os._exit) on item ``crash_at``: once per marker (a retried task
    then succeeds), or every time when ``marker`` is None."""

    def __init__(self, root, crash_at: int, marker: str | None):
        super().__init__(root)
        self.crash_at, self.marker = crash_at, marker

    def load(self, i):
        if i == self.crash_at:
            if self.marker is None:
                os._exit(3)
            if not os.path.exists(self.marker):
                Path(self.marker).write_text(str(os.getpid()))
                os._exit(3)
        return super().load(i)


class SlowSource(ImageFolderSource):
    """An ImageFolder that takes ``seconds`` per item (to catch a conversion mid-run)."""

    def __init__(self, root, seconds: float):
        super().__init__(root)
        self.seconds = seconds

    def load(self, i):
        time.sleep(self.seconds)
        return super().load(i)


def file_digests(dataset) -> dict[str, str]:
    """sha256 of every file of a dataset directory, by name (byte-identity of two conversions)."""
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(dataset).iterdir())}
