"""PNG files written by hand with zlib and struct, for the simulator's hostile downloads.

Nothing here decodes an image: the point of these files is that decoding them is what a careless client
does wrong (a decompression bomb, a gigantic real picture), so the simulator must stay able to serve them
without paying that cost itself. Each file is built once per process and kept in memory.
"""

from __future__ import annotations

import colorsys
import random
import struct
import threading
import zlib
from collections.abc import Callable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_DIMENSION = 2**31 - 1
"""The largest width or height a PNG header can state."""
MAX_BOMB_RAW = 2**35
"""Cap on the bytes a bomb inflates to (32 GiB): its file grows by about 1 KB per inflated MB."""
MAX_HUGE_RAW = 2**31
"""Cap on the bytes a huge picture inflates to (2 GiB): every row of it is really compressed."""

_IDAT_MAX = 1 << 20
_ZERO_BLOCK = 1 << 20
_BAND_BYTES = 32  # a huge picture's colour bands are 64 pixels wide (4 bits per pixel)

_cache: dict[tuple[str, int, int], bytes] = {}
_build_locks: dict[tuple[str, int, int], threading.Lock] = {}
_locks_lock = threading.Lock()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, zdata: bytes, plte: bytes = b"") -> bytes:
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    palette = _chunk(b"PLTE", plte) if plte else b""
    # Encoders split the image data over several IDAT chunks; clients must join them.
    idat = b"".join(_chunk(b"IDAT", zdata[i : i + _IDAT_MAX]) for i in range(0, len(zdata), _IDAT_MAX))
    return PNG_SIGNATURE + header + palette + idat + _chunk(b"IEND", b"")


def _cached(name: str, width: int, height: int, build: Callable[[int, int], bytes]) -> bytes:
    key = (name, width, height)
    # A lock per file: two first downloads of one file must not both spend its build time (or memory),
    # and a small file already built must not wait for a huge one being built (the event loop asks).
    with _locks_lock:
        lock = _build_locks.setdefault(key, threading.Lock())
    with lock:
        data = _cache.get(key)
        if data is None:
            data = _cache[key] = build(width, height)
        return data


def png_size(data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG's header declares (without decoding anything), or None."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def bomb_raw_bytes(width: int, height: int) -> int:
    """The bytes a bomb's image data inflates to: one filter byte and ceil(width / 8) bytes per row."""
    return height * (1 + (width + 7) // 8)


def huge_raw_bytes(width: int, height: int) -> int:
    return height * (1 + (width + 1) // 2)


def _zlib_zeros(n: int) -> bytes:
    """A zlib stream that inflates to ``n`` zero bytes, in milliseconds whatever ``n`` is.

    After a full flush a deflate compressor forgets its history, so every 1 MiB run of zeros compressed
    that way comes out as the same self-contained bytes: compress one and repeat it. The Adler-32 of
    ``n`` zeros needs no pass over them either: A stays 1 and B is ``n`` (mod 65521).
    """
    blocks, rest = divmod(n, _ZERO_BLOCK)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(_ZERO_BLOCK)) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(rest)) + last.flush()
    adler = ((n % 65521) << 16) | 1
    return b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)


def _build_bomb(width: int, height: int) -> bytes:
    # 1-bit grayscale, all black: the smallest file per declared pixel; a decoder needs width x height
    # bytes (Pillow's mode "1") or more to hold it.
    return _png(width, height, 1, 0, _zlib_zeros(bomb_raw_bytes(width, height)))


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG of a few hundred KB (at the default size) that declares ``width`` x ``height``."""
    return _cached("bomb", width, height, _build_bomb)


def _palette() -> bytes:
    colours = (colorsys.hsv_to_rgb(i / 16, 0.55, 0.95) for i in range(16))
    return b"".join(bytes(round(c * 255) for c in rgb) for rgb in colours)


def _build_huge(width: int, height: int) -> bytes:
    # 4-bit palette, diagonal colour bands: a picture a viewer shows, cheap to make row by row (only a
    # slice of one long line per row) and to compress (rows repeat within zlib's window).
    row_bytes = (width + 1) // 2
    period = 16 * _BAND_BYTES
    pattern = b"".join(bytes([i << 4 | i]) * _BAND_BYTES for i in range(16))
    line = pattern * (row_bytes // period + 2)
    compressor = zlib.compressobj(3)
    parts: list[bytes] = []
    for y in range(height):
        shift = (y // 2) % period
        parts.append(compressor.compress(b"\x00" + line[shift : shift + row_bytes]))
    parts.append(compressor.flush())
    return _png(width, height, 4, 3, b"".join(parts), plte=_palette())


def huge_png(width: int = 20_000, height: int = 14_000) -> bytes:
    """A real, valid ``width`` x ``height`` picture (16 colours), about 1.3 MB at the default size.

    Building it compresses every row: about half a second at the default size (call it in a thread).
    """
    return _cached("huge", width, height, _build_huge)


def _build_small(width: int, height: int) -> bytes:
    # RGB noise: it does not compress, so even a small picture has plenty of image data to cut short.
    rng = random.Random(f"{width}x{height}")
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    return _png(width, height, 8, 2, zlib.compress(raw))


def small_png(width: int = 32, height: int = 32) -> bytes:
    """A small valid RGB picture (noise)."""
    return _cached("small", width, height, _build_small)
