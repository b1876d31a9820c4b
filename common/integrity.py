"""Integrity digests of decoded content: a decoder returns the right features or fails loudly.

The encoder computes ``content_digest`` of what a decoder must reconstruct (the
frame codecs' decoded uint16 frame, the learned codec's reconstruction, raw's
stored bytes) and the bitstream carries it (``FeatureBitstream.decoded_digest``).
The decoder recomputes it on its output; a mismatch (a non-deterministic decoder,
another CPU's maths, a corrupted payload that still parses) is an `IntegrityError`.

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


def verify_digest(content: np.ndarray | bytes, expected: bytes, what: str) -> None:
    """Raise `IntegrityError` unless ``content`` has the digest ``expected`` (``what`` names the decoder)."""
    if not expected:
        raise IntegrityError(f"{what}: the bitstream carries no integrity digest of the decoded content")
    if len(expected) != DIGEST_BYTES:
        raise IntegrityError(f"{what}: integrity digest has {len(expected)} bytes, expected {DIGEST_BYTES}")
    got = content_digest(content)
    if got != expected:
        raise IntegrityError(
            f"{what}: decoded content does not match the encoder's digest ({got.hex()} != {expected.hex()}); "
            "the payload is corrupt or this decoder reconstructs differently from the encoder's"
        )
