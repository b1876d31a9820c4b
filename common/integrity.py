"""Integrity digests of decoded content: a decoder returns the right features or fails loudly.

The encoder computes ``content_digest`` of what a decoder must reconstruct (the
frame codecs' decoded uint16 frame, the learned codec's reconstruction, raw's
stored bytes). The bitstream carries it bound to the header (`bind_digest`):
``decoded_digest = BLAKE2b-64(header || content digest)``, where the header is the
message without its payload, CRC and digest (`splitfc.common.bitstream.header_bytes`),
so the fields the decoder rebuilds the features from (split, shape, dtype, ranges,
bit depth, packing, codec, rate, extras) are covered as well as the content. The
decoder recomputes it on its output; a mismatch (a non-deterministic decoder,
another CPU's maths, a corrupted payload or header that still parses) is an
`IntegrityError`.

The digest is BLAKE2b with an 8-byte output (``hashlib``) over the content's
bytes; arrays are hashed as little-endian C-order bytes together with their
shape and dtype.
"""

from __future__ import annotations

import hashlib

import numpy as np

from splitfc.common.errors import IntegrityError

DIGEST_BYTES = 8


def content_digest(content: np.ndarray | bytes) -> bytes:
    """BLAKE2b-64 of ``content``: bytes as they are, or an array with its shape and dtype."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    if isinstance(content, bytes | bytearray | memoryview):
        h.update(content)
        return h.digest()
    arr = np.asarray(content)
    le = arr.dtype.newbyteorder("<")
    h.update(f"{le.str}{arr.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(arr, dtype=le)).cast("B"))
    return h.digest()


def bind_digest(content: bytes, header: bytes) -> bytes:
    """The digest the bitstream carries: BLAKE2b-64 of ``header`` followed by the content digest."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(header)
    h.update(content)
    return h.digest()


def verify_digest(content: np.ndarray | bytes, expected: bytes, what: str, header: bytes | None = None) -> None:
    """Raise `IntegrityError` unless ``content`` has the digest ``expected`` (``what`` names the decoder).

    With ``header`` (the bitstream's header bytes), ``expected`` is the bound digest (`bind_digest`).
    """
    if not expected:
        raise IntegrityError(f"{what}: the bitstream carries no integrity digest of the decoded content")
    if len(expected) != DIGEST_BYTES:
        raise IntegrityError(f"{what}: integrity digest has {len(expected)} bytes, expected {DIGEST_BYTES}")
    got = content_digest(content)
    if header is not None:
        got = bind_digest(got, header)
    if got != expected:
        raise IntegrityError(
            f"{what}: decoded content does not match the encoder's digest ({got.hex()} != {expected.hex()}); "
            "the payload or header is corrupt, or this decoder reconstructs differently from the encoder's"
        )
