"""Reading response bodies with a size cap that also holds for compressed bodies.

httpx's own decoding inflates a whole network chunk at once, so a 64 KiB gzip chunk of zeros becomes
~64 MiB in memory before any cap could look at it. Here the raw bytes are inflated with ``max_length``, a
piece at a time, and the cap is checked on what was actually produced: a 50 MB answer, compressed or not,
is never held whole.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Iterator

import httpx

__all__ = ["BodyTooLargeError", "BodyUndecodableError", "iter_body", "read_body"]

_PIECE = 1 << 16


class BodyTooLargeError(ValueError):
    """The body went past the cap; ``limit`` is the cap in bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit:,} bytes")
        self.limit = limit


class BodyUndecodableError(ValueError):
    """A ``Content-Encoding`` this reader does not speak, or compressed data that does not inflate."""


class _Inflater:
    """gzip or deflate, inflated at most ``_PIECE`` bytes per step."""

    def __init__(self, encoding: str) -> None:
        # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate: try the wrapper first.
        self._wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(self._wbits)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data and not self._inflate.eof:
            try:
                out = self._inflate.decompress(data, _PIECE)
            except zlib.error:
                if self._started or self._wbits != zlib.MAX_WBITS:
                    raise BodyUndecodableError("the compressed body is corrupt") from None
                self._wbits = -zlib.MAX_WBITS
                self._inflate = zlib.decompressobj(self._wbits)
                continue
            self._started = True
            data = self._inflate.unconsumed_tail
            if out:
                yield out
        # Whatever follows the end of the compressed stream is ignored, as browsers do.


def _inflater_for(response: httpx.Response) -> _Inflater | None:
    encoding = (response.headers.get("Content-Encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater(encoding)
    raise BodyUndecodableError("the body uses a content encoding this client does not accept")


async def iter_body(
    response: httpx.Response, limit: int, *, chunk_size: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The streamed ``response``'s body, decoded, in pieces; :class:`BodyTooLargeError` past ``limit`` bytes.

    For responses from ``send(..., stream=True)``; the caller closes the response.
    """
    if response.is_stream_consumed:
        # Already read into memory (a response built from bytes, as mock transports return): httpx has
        # decoded it, so only the cap is left to apply.
        content = response.content
        if len(content) > limit:
            raise BodyTooLargeError(limit)
        if content:
            yield content
        return
    inflater = _inflater_for(response)
    total = 0
    async for raw in response.aiter_raw(chunk_size):
        for piece in inflater.feed(raw) if inflater is not None else (raw,):
            total += len(piece)
            if total > limit:
                raise BodyTooLargeError(limit)
            yield piece


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The whole body of a streamed ``response``, at most ``limit`` bytes (else :class:`BodyTooLargeError`)."""
    parts: list[bytes] = []
    async for piece in iter_body(response, limit):
        parts.append(piece)
    return b"".join(parts)
