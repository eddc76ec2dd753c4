"""A loss-curve PNG without plotting libraries: lines rasterised into an RGB image, zlib-packed.

Deliberately small: axes box, light grid, one or two series (train, validation), no text
(the numbers are in metrics.jsonl next to the image).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Point = tuple[float, float]
Color = tuple[int, int, int]


def write_loss_png(
    path: Path,
    series: Sequence[tuple[Sequence[Point], Color]],
    width: int = 640,
    height: int = 400,
) -> None:
    """Draw each (points, color) as a polyline scaled to the common x/y range; write PNG."""
    pixels = bytearray(b"\xff" * (width * height * 3))
    margin = 20
    # A diverged or empty evaluation (NaN, inf) has no place on the plot.
    series = [([p for p in points if math.isfinite(p[0] + p[1])], c) for points, c in series]
    all_points = [p for points, _ in series for p in points]
    if all_points:
        xs = [x for x, _ in all_points]
        ys = [y for _, y in all_points]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

        def to_px(p: Point) -> tuple[int, int]:
            px = margin + (p[0] - x0) / (x1 - x0) * (width - 2 * margin)
            py = height - margin - (p[1] - y0) / (y1 - y0) * (height - 2 * margin)
            return round(px), round(py)

        for i in range(1, 10):  # grid
            gy = margin + i * (height - 2 * margin) // 10
            _line(pixels, width, height, (margin, gy), (width - margin, gy), (225, 225, 225))
        for points, color in series:
            for a, b in itertools.pairwise(points):
                _line(pixels, width, height, to_px(a), to_px(b), color)
    left, top, right, bottom = margin, margin, width - margin, height - margin
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    for a, c in itertools.pairwise(corners):
        _line(pixels, width, height, a, c, (0, 0, 0))
    path.write_bytes(_encode_png(pixels, width, height))


def _line(buf: bytearray, w: int, h: int, a: tuple[int, int], b: tuple[int, int], c: Color) -> None:
    (x0, y0), (x1, y1) = a, b
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    for i in range(steps + 1):
        x = x0 + (x1 - x0) * i // steps
        y = y0 + (y1 - y0) * i // steps
        if 0 <= x < w and 0 <= y < h:
            off = (y * w + x) * 3
            buf[off : off + 3] = bytes(c)


def _encode_png(pixels: bytearray, width: int, height: int) -> bytes:
    raw = b"".join(
        b"\x00" + bytes(pixels[y * width * 3 : (y + 1) * width * 3]) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
