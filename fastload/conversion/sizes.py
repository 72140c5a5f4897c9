"""Byte sizes written by people ("256MB", "1GiB") and for people."""
from __future__ import annotations

import re

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | int) -> int:
    """``"256MB"`` -> 256_000_000, ``"1GiB"`` -> 2**30, ``"4096"`` -> 4096 (decimal k/M/G, binary Ki/Mi/Gi)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"not a size: {text!r} (examples: 256MB, 1GiB, 500000)")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError
