"""Byte layout of a hyperprior payload (all integers unsigned LEB128 varints).

::

    version      1 byte, = 2 (1: before the integer hyper-synthesis, refused)
    tile / 64    varint   tile size in units of 64 (the frame is cut into tiles of this size)
    per tile, row-major:
      len(y)     varint   bytes of the y (Gaussian-conditional) rANS string
      len(z)     varint   bytes of the z (entropy-bottleneck) rANS string
      y bytes, z bytes

The y/z tensor shapes are not stored: they follow from the frame size in the
bitstream header and the tile size. ``unpack_payload`` checks every length
against the bytes present and refuses trailing bytes.

Version 2 (this one) codes ``y`` with CDF indexes from the integer-exact
hyper-synthesis (`splitfc.common.learned.model.IntegerHyperSynthesis`). Version
1 payloads were coded with indexes from the float ``h_s``; decoding them with
the integer indexes would give garbage, so they are refused.
"""

from __future__ import annotations

from splitfc.common.errors import BitstreamError

PAYLOAD_VERSION = 2
_MAX_VARINT_BYTES = 5


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise BitstreamError("hyperprior payload is truncated (in a length field)")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise BitstreamError("hyperprior payload has an over-long length field")


def pack_payload(tile: int, strings: list[tuple[bytes, bytes]]) -> bytes:
    """Serialize the per-tile (y, z) rANS strings."""
    if tile % 64 or tile <= 0:
        raise ValueError(f"tile size must be a positive multiple of 64, got {tile}")
    out = bytearray([PAYLOAD_VERSION])
    out += _varint(tile // 64)
    for y, z in strings:
        out += _varint(len(y)) + _varint(len(z))
        out += y + z
    return bytes(out)


def unpack_payload(data: bytes, tile_count_for: object) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Parse a payload; ``tile_count_for(tile)`` says how many tiles a tile size implies.

    Raises `BitstreamError` on any inconsistency.
    """
    if len(data) < 2:
        raise BitstreamError("hyperprior payload is truncated (no header)")
    if data[0] == 1:
        raise BitstreamError(
            "hyperprior payload version 1 was coded with the float hyper-synthesis, which this reader no longer "
            f"uses (it reads version {PAYLOAD_VERSION}); re-encode the features with this splitfc"
        )
    if data[0] != PAYLOAD_VERSION:
        raise BitstreamError(f"hyperprior payload version {data[0]} is unknown (this reader knows {PAYLOAD_VERSION})")
    units, pos = _read_varint(data, 1)
    if not 1 <= units <= 256:
        raise BitstreamError(f"hyperprior payload declares an invalid tile size {units * 64}")
    tile = units * 64
    count = tile_count_for(tile)  # type: ignore[operator]
    strings: list[tuple[bytes, bytes]] = []
    for _ in range(count):
        ny, pos = _read_varint(data, pos)
        nz, pos = _read_varint(data, pos)
        end = pos + ny + nz
        if end > len(data):
            raise BitstreamError("hyperprior payload is truncated (a string runs past the end)")
        strings.append((data[pos:pos + ny], data[pos + ny:end]))
        pos = end
    if pos != len(data):
        raise BitstreamError(f"hyperprior payload has {len(data) - pos} trailing bytes")
    return tile, strings
