"""Damaged copies of good files for the fuzz tests of byte readers: bytes set, truncated, inserted, deleted."""
from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mangled(draw, sources: list[bytes]) -> bytes:
    """One of ``sources`` with 1-6 random edits."""
    data = bytearray(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        action = draw(st.sampled_from(["set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if action == "set":
            data[pos] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:pos + draw(st.integers(1, 16))]
    return bytes(data)
