"""Pre- and post-processing of paper Section 6.1.1: truncate, quantize, pack (and the header fields).

Everything about the pre-processing lives here: ``FramePlan`` (a split's tensor ->
quantized 2-D frame and back), ``FrameInfo`` (what the bitstream header carries of it,
to and from the ``Preprocessing`` message, validated), and ``pad_frame``.

``pack_frame``/``unpack_frame`` turn a split's N-d tensor into one 2-D frame and
back; ``quantize``/``dequantize`` map a truncation range onto ``2**bit_depth``
uniform levels. Quantization rounds to the nearest level (the paper's code
floors), so the reconstruction error inside the range is at most half a step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from splitfc.common.errors import HeaderError, ShapeError
from splitfc.common.specs import Packing, Range, SplitSpec
from splitfc.common.untrusted import quote
from splitfc.v1 import bitstream_pb2 as pb

DEFAULT_BIT_DEPTH = 10


def tile_grid(channels: int) -> tuple[int, int]:
    """Rows x columns for tiling ``channels`` maps: the squarest factorisation, rows <= columns."""
    rows = math.isqrt(channels)
    while channels % rows:
        rows -= 1
    return rows, channels // rows


def packed_shape(shape: Sequence[int], packing: Packing) -> tuple[int, int]:
    """Size of the 2-D frame that ``pack_frame`` makes of a tensor of ``shape``."""
    s = tuple(int(v) for v in shape)
    if packing is Packing.AS_IS and len(s) == 2:
        return s[0], s[1]
    if packing is Packing.STACK_VIEWS and len(s) == 3:
        return s[0] * s[1], s[2]
    if packing is Packing.VIEWS_LAYERS and len(s) == 4:
        return s[0] * s[2], s[1] * s[3]
    if packing is Packing.TILE_CHANNELS and len(s) == 3:
        rows, cols = tile_grid(s[0])
        return rows * s[1], cols * s[2]
    raise ShapeError(f"packing {packing.value} cannot take a tensor of shape {s}")


def pack_frame(x: np.ndarray, packing: Packing) -> np.ndarray:
    """Pack a feature tensor into one 2-D frame (a view where possible)."""
    packed_shape(x.shape, packing)  # validates rank
    if packing is Packing.AS_IS:
        return x
    if packing is Packing.STACK_VIEWS:
        v, t, c = x.shape
        return x.reshape(v * t, c)
    if packing is Packing.VIEWS_LAYERS:
        v, la, t, c = x.shape
        return x.transpose(0, 2, 1, 3).reshape(v * t, la * c)
    ch, h, w = x.shape
    rows, cols = tile_grid(ch)
    return x.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def unpack_frame(frame: np.ndarray, shape: Sequence[int], packing: Packing) -> np.ndarray:
    """Inverse of `pack_frame`: the 2-D frame back into a tensor of ``shape``."""
    shape = tuple(int(v) for v in shape)
    expected = packed_shape(shape, packing)
    if frame.shape != expected:
        raise ShapeError(f"frame of shape {frame.shape} does not unpack to {shape} (needs {expected})")
    if packing is Packing.AS_IS:
        return frame
    if packing is Packing.STACK_VIEWS:
        return frame.reshape(shape)
    if packing is Packing.VIEWS_LAYERS:
        v, la, t, c = shape
        return frame.reshape(v, t, la, c).transpose(0, 2, 1, 3)
    ch, h, w = shape
    rows, cols = tile_grid(ch)
    return frame.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(ch, h, w)


def _broadcast_ranges(
    ndim: int, ranges: Sequence[Range], group_axis: int | None
) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray([r[0] for r in ranges], dtype=np.float64)
    high = np.asarray([r[1] for r in ranges], dtype=np.float64)
    if np.any(high <= low):
        raise ValueError(f"truncation ranges must have high > low, got {list(ranges)}")
    if len(ranges) == 1:
        return low[:1].reshape((1,) * ndim), high[:1].reshape((1,) * ndim)
    if group_axis is None:
        raise ValueError("several truncation ranges need a group axis")
    shape = [1] * ndim
    shape[group_axis] = len(ranges)
    return low.reshape(shape), high.reshape(shape)


BLOCK_ELEMENTS = 1 << 20
"""Elements per float64 temporary of `quantize`/`dequantize` (8 MiB): their extra memory is bounded."""


def _blocks(shape: tuple[int, ...]) -> Iterator[tuple[int | slice, ...]]:
    """Indexes of sub-arrays of at most `BLOCK_ELEMENTS` elements covering ``shape`` (a slice on one axis,
    single positions on the axes before it; at least one position of that axis per block)."""
    if not shape:
        yield ()
        return
    axis = 0
    while axis < len(shape) - 1 and prod(shape[axis + 1:]) > BLOCK_ELEMENTS:
        axis += 1
    step = max(1, BLOCK_ELEMENTS // max(1, prod(shape[axis + 1:])))
    for head in np.ndindex(*shape[:axis]):
        for start in range(0, shape[axis], step):
            yield (*head, slice(start, start + step))


def _at(a: np.ndarray, index: tuple[int | slice, ...]) -> np.ndarray:
    """``a`` (broadcastable to the tensor) at the tensor's block ``index``, still broadcastable to the block."""
    return a[tuple(i if a.shape[d] > 1 else (0 if isinstance(i, int) else slice(None)) for d, i in enumerate(index))]


def quantize(
    x: np.ndarray, ranges: Sequence[Range], group_axis: int | None = None,
    bit_depth: int = DEFAULT_BIT_DEPTH,
) -> np.ndarray:
    """Truncate ``x`` to its range(s) and quantize uniformly to ``bit_depth``-bit integers (uint16, shape of ``x``).

    The rule, in float64: ``q = rint((clip(x, low, high) - low) * (levels / (high - low)))`` with
    ``levels = 2**bit_depth - 1``; ``rint`` rounds half to even, so a value exactly on a bin edge
    (``(k + 0.5)`` after scaling) goes to the even level. ``x`` is processed in blocks of at most
    `BLOCK_ELEMENTS` elements (`_blocks`): the extra memory is one float64 block beside the uint16 output.
    """
    low, high = _broadcast_ranges(x.ndim, ranges, group_axis)
    if group_axis is not None and len(ranges) > 1 and x.shape[group_axis] != len(ranges):
        raise ShapeError(f"{len(ranges)} ranges for {x.shape[group_axis]} groups on axis {group_axis}")
    levels = (1 << bit_depth) - 1
    scale = levels / (high - low)
    out = np.empty(x.shape, dtype=np.uint16)
    for index in _blocks(x.shape):
        lo = _at(low, index)
        block = np.array(x[index], dtype=np.float64)
        np.clip(block, lo, _at(high, index), out=block)
        block -= lo
        block *= _at(scale, index)
        out[index] = np.rint(block, out=block)
        del block  # before the next block is allocated: one block alive at a time
    return out


def dequantize(
    q: np.ndarray, ranges: Sequence[Range], group_axis: int | None = None,
    bit_depth: int = DEFAULT_BIT_DEPTH,
) -> np.ndarray:
    """Map ``bit_depth``-bit integers back to float32 values inside the range(s): ``float32(q * step + low)``.

    Computed in float64 blocks (as `quantize`), element-wise IEEE operations only, so the result is the
    same on every CPU; the output is C-contiguous whatever the layout of ``q``.
    """
    low, high = _broadcast_ranges(q.ndim, ranges, group_axis)
    step = (high - low) / ((1 << bit_depth) - 1)
    out = np.empty(q.shape, dtype=np.float32)
    for index in _blocks(q.shape):
        block = np.array(q[index], dtype=np.float64)
        block *= _at(step, index)
        block += _at(low, index)
        out[index] = block
        del block
    return out


@dataclass(frozen=True)
class FramePlan:
    """How one tensor becomes a quantized 2-D frame for a split and codec family."""

    spec: SplitSpec
    shape: tuple[int, ...]
    ranges: tuple[Range, ...]
    bit_depth: int = DEFAULT_BIT_DEPTH

    @property
    def frame_shape(self) -> tuple[int, int]:
        return packed_shape(self.shape, self.spec.packing)

    def to_frame(self, x: np.ndarray) -> np.ndarray:
        """Truncate, quantize and pack: float tensor -> uint16 2-D frame."""
        q = quantize(x, self.ranges, self.spec.group_axis, self.bit_depth)
        return np.ascontiguousarray(pack_frame(q, self.spec.packing))

    def from_frame(self, frame: np.ndarray) -> np.ndarray:
        """Unpack and dequantize: uint16 2-D frame -> float32 tensor."""
        q = unpack_frame(frame, self.shape, self.spec.packing)
        return dequantize(q, self.ranges, self.spec.group_axis, self.bit_depth)


@dataclass(frozen=True)
class FrameInfo:
    """The pre-processing of one coded tensor, as the bitstream header carries it (``Preprocessing``)."""

    ranges: tuple[Range, ...]
    bit_depth: int
    packing: Packing
    frame_height: int
    frame_width: int

    def to_proto(self) -> pb.Preprocessing:
        """The header's ``Preprocessing`` message."""
        return pb.Preprocessing(
            ranges=[pb.Range(low=lo, high=hi) for lo, hi in self.ranges], bit_depth=self.bit_depth,
            packing=self.packing.value, frame_height=self.frame_height, frame_width=self.frame_width,
        )

    @classmethod
    def from_proto(cls, pre: pb.Preprocessing, spec: SplitSpec, shape: tuple[int, ...]) -> FrameInfo:
        """Read and validate a header's ``Preprocessing`` for a tensor of ``shape`` of ``spec``.

        Raises `HeaderError` naming the first problem: a packing that is not the split's, a frame size
        that is not the packed shape, a wrong number of ranges, a range that is not finite with
        high > low, a bit depth outside 1..16.
        """
        if pre.packing != spec.packing.value:
            raise HeaderError(
                f"packing {quote(pre.packing)} does not match split {spec.id} ({spec.packing.value})"
            )
        expected = packed_shape(shape, spec.packing)
        if (pre.frame_height, pre.frame_width) != expected:
            raise HeaderError(
                f"frame {pre.frame_height}x{pre.frame_width} does not match shape {shape} packed "
                f"({'x'.join(map(str, expected))})"
            )
        groups = 1 if spec.group_axis is None else shape[spec.group_axis]
        if len(pre.ranges) not in (1, groups):
            raise HeaderError(f"header has {len(pre.ranges)} truncation ranges, split {spec.id} takes 1 or {groups}")
        for r in pre.ranges:
            if not (math.isfinite(r.low) and math.isfinite(r.high) and r.high > r.low):
                raise HeaderError(
                    f"invalid truncation range [{r.low:g}, {r.high:g}] in the header: must be finite with high > low"
                )
        if not 1 <= pre.bit_depth <= 16:
            raise HeaderError(f"invalid bit depth {pre.bit_depth}")
        return cls(tuple((r.low, r.high) for r in pre.ranges), pre.bit_depth, spec.packing,
                   pre.frame_height, pre.frame_width)


def padded_size(size: int, multiple: int, minimum: int = 0) -> int:
    """``size`` rounded up to a multiple of ``multiple``, and at least ``minimum``."""
    return max(size + (-size % multiple), minimum)


def pad_frame(frame: np.ndarray, multiple: int, minimum: int = 0) -> np.ndarray:
    """Pad a 2-D frame on the bottom/right by edge replication to a multiple of ``multiple`` in each
    dimension (and at least ``minimum``): what block-based codecs need; decoders crop back."""
    h, w = frame.shape
    ph, pw = padded_size(h, multiple, minimum) - h, padded_size(w, multiple, minimum) - w
    if ph == 0 and pw == 0:
        return frame
    return np.pad(frame, ((0, ph), (0, pw)), mode="edge")
