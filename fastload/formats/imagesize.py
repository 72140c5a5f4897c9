"""Read an encoded image's pixel size from its header (JPEG, PNG, GIF, BMP, WebP) without decoding.

Pure Python so that the storage layer needs no imaging library; the converter uses PIL instead.
"""
from __future__ import annotations

import struct

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...); C4, C8, CC are not frames.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def probe_image_size(data: bytes | memoryview) -> tuple[int, int]:
    """Return (width, height) of the encoded image ``data``; ValueError if the header is not recognised."""
    b = bytes(data[:32])
    if b[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24 and b[12:16] == b"IHDR":
        return struct.unpack(">II", b[16:24])
    if b[:6] in (b"GIF87a", b"GIF89a") and len(b) >= 10:
        return struct.unpack("<HH", b[6:10])
    if b[:2] == b"BM" and len(b) >= 26:
        w, h = struct.unpack("<ii", b[18:26])
        return abs(w), abs(h)
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP" and len(b) >= 30:
        chunk = b[12:16]
        if chunk == b"VP8 " and b[23:26] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", b[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and b[20] == 0x2F:
            bits = int.from_bytes(b[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    raise ValueError("not a recognised image (JPEG, PNG, GIF, BMP or WebP header expected)")


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    mv = memoryview(data)
    n, pos = len(mv), 2
    while pos + 4 <= n:
        if mv[pos] != 0xFF:
            raise ValueError("corrupt JPEG header (marker expected)")
        marker = mv[pos + 1]
        if marker == 0xFF:            # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # markers without a length
            pos += 2
            continue
        seglen = (mv[pos + 2] << 8) | mv[pos + 3]
        if seglen < 2:
            raise ValueError("corrupt JPEG header (segment length)")
        if marker in _SOF:
            if pos + 9 > n:
                break
            h = (mv[pos + 5] << 8) | mv[pos + 6]
            w = (mv[pos + 7] << 8) | mv[pos + 8]
            return w, h
        if marker == 0xDA:            # start of scan before any frame header
            break
        pos += 2 + seglen
    raise ValueError("JPEG without a frame header")
