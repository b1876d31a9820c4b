"""``native``: a feature-native codec: the tensor is coded as it is, with no image packing (v2).

Parts (each kept because of a measurement; figures from ``/tmp``-free commands in README.md, "The
native codec", and the issue-15 notes):

1. Components: the channels of the split's layout (channel-major, each channel's tokens contiguous),
   or, where a transform for the split is known (`native_transform.find_native_transform`), the
   coefficients ``y = Bq @ (x - mean)`` of its principal directions, ``Bq = rint(basis * 2**20) / 2**20``
   (the integer basis the decoder uses: closed loop). The encoder keeps the transform only where it
   lowers ``squared error + LAMBDA * step**2 * estimated bits``.
2. Optionally (header byte ``token block`` = 8) an orthonormal 8-point Walsh-Hadamard transform along
   the token axis (the innermost non-channel axis), in blocks after ``length % 8`` leading tokens
   (`Bands`), tried only where adjacent tokens correlate (> `TOKEN_CORRELATION`) and kept by the same
   cost. Small-preset features (PCA domain, adjacent-token correlation 0.34-0.67): BD-rate on feature
   PSNR vs hevc, Seg -60 % -> -68 %, Dpt -72 % -> -86 %; tiny random-weight models (0.13-0.2): no gain.
   For Seg (2 views of 1 + g*g tokens, the second the first mirrored left-right) a sum/difference of
   the views at mirrored positions comes first (`Bands.mirror`): -7.5 % tiny, -24 % small (feature PSNR).
   The encoder compares plain and fitted components in the plain layout, then tries the other layouts
   of the better one only.
3. Per-component DC (mean over tokens; with the token transform, of the lead band and of frequency 0)
   on a grid of ``step / MEAN_GRID``, sent as integers (massive-activation channels are mostly an offset).
4. Uniform dead-zone scalar quantization with one step for the whole tensor (MSE-optimal across
   components, task-agnostic): ``step = rms * 2**((rate - 32) / 6)``, ``rms`` the root mean square of the
   channel-mean-removed tensor; higher rate = coarser = fewer bits. Rounding offset 0.15 measured best
   of 0, 0.08, 0.15, 0.22 (BD on feature PSNR +6 %, +0.6 %, 0, +1.6 % on tiny Cls/CSR/TTI).
5. Entropy coding (`native_entropy`): one scale class per component (plus a class offset per band) and
   one tilt per tensor chosen by the encoder, the class indices (delta-coded) and DCs coded with a class
   of their own, all through constriction's ANS coder, one call per (band, class). Components past the
   last nonzero one are not coded (``K`` in the header).

No fitting is needed (without a transform everything travels in the payload). Decoding is
integer-exact up to the final scaling: ``G_b = MEAN_GRID * q_b + dc_b`` are integers, the inverse
token transform sums 8 of them with signs (exact), and with a channel transform ``B.T @ Z`` is a
float64 product of integer matrices whose every partial sum is an integer below 2**53 (checked:
``max|B| * max_n sum_k |Z_kn| < 2**53``; else the encoder codes without the transform and the decoder
refuses), so any BLAS, thread count or summation order gives the same bits; then one element-wise
product with a per-position float64 scale (``step / MEAN_GRID``, times ``1/sqrt(8)`` on transformed
tokens, ``/ 2**20`` with a basis) and, with a basis, one addition of its mean, cast to float32. The
encoder computes its reconstruction with the decoder's function; the integrity digest covers it.

Payload: `HEADER` (``<B version><8s transform id, zeros: none><f4 step><I channels><I K><B tilt>
<B class-index class><B class-index tilt><B DC class><B DC tilt><B token block>``), with a token block
its ``block + 1`` band class offsets (int8), then the ANS words (little-endian uint32): the K
class-index deltas, the DCs (``dc_bands x K``), then per band the symbols of every class in ascending
class order (components in order, positions in order; escapes after each class).
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from splitfc.common.codecs import native_entropy as ne
from splitfc.common.codecs import register_codec
from splitfc.common.codecs.base import Codec, Encoded
from splitfc.common.codecs.raw import check_storable
from splitfc.common.errors import BitstreamError, SplitfcError
from splitfc.common.integrity import content_digest, verify_digest
from splitfc.common.specs import SplitSpec
from splitfc.common.untrusted import quote

if TYPE_CHECKING:
    from splitfc.common.codecs.native_transform import NativeTransform

VERSION = 2
HEADER = struct.Struct("<B8sfIIBBBBBB")
NO_TRANSFORM = bytes(8)
MEAN_GRID = 8
"""Component DCs are sent in units of ``step / MEAN_GRID`` (their error is at most step / 16)."""
DEAD_ZONE = 0.15
"""Rounding offset taken off before flooring |x| / step: 0 is plain rounding."""
MAX_SYMBOL = 1 << 26
"""Largest |symbol| coded: a tensor whose values span more than 2**26 steps is refused (decoders too)."""
MAX_DC = 1 << 29
"""Largest |DC| in units of step / MEAN_GRID."""
BASIS_BITS = 20
"""The decoder's basis is ``rint(basis * 2**BASIS_BITS)`` (integers)."""
EXACT_LIMIT = 2.0 ** 53
"""Integer float64 sums below this are exact whatever the summation order."""
BLOCK_ELEMENTS = 1 << 20
"""Dequantization runs over blocks of about this many elements (bounded temporaries)."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Reconstructions are clipped to the finite range of their dtype (finite inputs near its edge can round
past it by up to half a step; clipping only moves such values closer to the input)."""


def channel_axis(spec: SplitSpec, ndim: int) -> int:
    """The channel axis of a tensor of ``spec`` (the layout's ``channels``; the last axis otherwise)."""
    if "channels" in spec.layout and len(spec.layout) == ndim:
        return spec.layout.index("channels")
    return ndim - 1


def _find_transform(split_id: str, channels: int) -> NativeTransform | None:
    try:
        from splitfc.common.codecs.native_transform import find_native_transform
    except ImportError:
        return None
    return find_native_transform(split_id, channels)


def _get_transform(transform_id: bytes) -> NativeTransform:
    try:
        from splitfc.common.codecs.native_transform import get_native_transform
    except ImportError:
        raise BitstreamError(f"native payload names transform {transform_id.hex()}, and this decoder has "
                             "no transforms") from None
    return get_native_transform(transform_id)


_BASIS_CACHE: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}


def integer_basis(transform: NativeTransform) -> tuple[np.ndarray, np.ndarray]:
    """``(B, B.T)``: float64 (C, C) integer-valued ``rint(basis * 2**BASIS_BITS)`` (element-wise, exact)."""
    key = transform.transform_id
    if key not in _BASIS_CACHE:
        basis = np.asarray(transform.basis, np.float64)
        c = transform.channels
        if basis.shape != (c, c) or np.asarray(transform.mean).shape != (c,) or not np.all(np.isfinite(basis)):
            raise BitstreamError(f"native transform {key.hex()} is malformed (basis {basis.shape}, {c} channels)")
        b = np.rint(basis * 2.0 ** BASIS_BITS)
        _BASIS_CACHE[key] = (b, np.ascontiguousarray(b.T))
    return _BASIS_CACHE[key]


TOKEN_BLOCK = 8
"""Token-axis Walsh-Hadamard block length (0 in the header: no token transform)."""
HADAMARD = np.array([[1.0]])
for _ in range(3):
    HADAMARD = np.block([[HADAMARD, HADAMARD], [HADAMARD, -HADAMARD]])
"""The 8 x 8 Hadamard matrix of +-1 (symmetric; ``HADAMARD @ HADAMARD = 8 I``)."""
INV_SQRT_BLOCK = 0.5 / math.sqrt(2.0)
"""1 / sqrt(8) (a correctly rounded square root and a halving: the same bits everywhere)."""
TOKEN_CORRELATION = 0.3
"""The encoder tries the token transform only when adjacent tokens correlate more than this (small-preset
DINOv2 and SmolLM2 features in PCA order: 0.34-0.67; tiny random-weight models: 0.13-0.2, where it lost)."""


@dataclass(frozen=True)
class Bands:
    """How a component row of ``outer * length`` positions (tokens innermost) splits into bands.

    ``block == 0``: one band, the row itself. ``block == 8``: per stretch of ``length`` tokens, the first
    ``lead = length % 8`` stay as they are (band 0: a ViT's class token, an LLM's first tokens), the rest
    go through an orthonormal 8-point Walsh-Hadamard transform in blocks; band ``1 + f`` holds frequency
    ``f`` of every block. Bands 0 and 1 carry a DC each, the others none.
    """

    outer: int
    length: int
    block: int
    mirror: int = 0
    """Grid side ``g`` when the row is 2 views of ``1 + g * g`` tokens (a class token, then a g x g patch
    grid) whose second view is the first mirrored left to right (a flip test-time augmentation): the
    views first go through an orthonormal sum and difference at mirrored positions, and each of the two
    halves is then banded as above (the sum's bands first; DCs on the sum only). 0: no mirror."""

    @property
    def lead(self) -> int:
        return self.length % self.block if self.block else self.length

    @property
    def blocks(self) -> int:
        return self.length // self.block if self.block else 0

    def _half(self) -> Bands:
        return Bands(1, self.length, self.block)

    @property
    def sizes(self) -> list[int]:
        """Symbols per component in each band."""
        if self.mirror:
            half = self._half().sizes
            return half + half
        if not self.block:
            return [self.outer * self.length]
        return [self.outer * self.lead] + [self.outer * self.blocks] * self.block

    @property
    def dc_bands(self) -> int:
        return 2 if self.block else 1

    def analyse(self, y: np.ndarray) -> list[np.ndarray]:
        """Bands (each (K, size)) of float components ``y`` (K, outer * length) (encoder only)."""
        k = y.shape[0]
        if self.mirror:
            z = y.reshape(k, 2, self.length)
            other = z[:, 1][:, mirror_permutation(self.length, self.mirror)]
            half = self._half()
            return half.analyse((z[:, 0] + other) * INV_SQRT2) + half.analyse((z[:, 0] - other) * INV_SQRT2)
        if not self.block:
            return [y]
        z = y.reshape(k, self.outer, self.length)
        kernel = HADAMARD * INV_SQRT_BLOCK
        out = [np.ascontiguousarray(z[:, :, :self.lead]).reshape(k, self.outer * self.lead)]
        dtype = np.result_type(y.dtype, kernel.dtype)
        out += [np.empty((k, self.outer * self.blocks), dtype) for _ in range(self.block)]
        # in row blocks (each component's (blocks, 8) @ (8, 8) product is the same whatever the block)
        rows = max(1, BLOCK_ELEMENTS // max(self.outer * self.length, 1))
        for r0 in range(0, k, rows):
            r1 = min(k, r0 + rows)
            body = z[r0:r1, :, self.lead:].reshape(r1 - r0, self.outer, self.blocks, self.block) @ kernel
            for f in range(self.block):
                out[1 + f][r0:r1] = body[..., f].reshape(r1 - r0, self.outer * self.blocks)
        return out

    def synthesise(self, bands: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Integer-valued float64 (K, outer * length) and the per-position factor (None: all 1) from
        integer-valued float64 bands: ``HADAMARD`` sums 8 integers below 2**40 and the mirror adds or
        subtracts two such sums, so both are exact."""
        k = bands[0].shape[0]
        if self.mirror:
            half = self._half()
            n = len(bands) // 2
            total, factor = half.synthesise(bands[:n])
            diff, _ = half.synthesise(bands[n:])
            z = np.empty((k, 2, self.length))
            z[:, 0] = total + diff
            z[:, 1, mirror_permutation(self.length, self.mirror)] = total - diff
            factor = np.ones(self.length) if factor is None else factor
            return z.reshape(k, 2 * self.length), np.tile(factor * INV_SQRT2, 2)
        if not self.block:
            return bands[0], None
        z = np.empty((k, self.outer, self.length))
        z[:, :, :self.lead] = bands[0].reshape(k, self.outer, self.lead)
        coef = np.stack([b.reshape(k, self.outer, self.blocks) for b in bands[1:]], axis=-1)
        z[:, :, self.lead:] = (coef @ HADAMARD).reshape(k, self.outer, self.blocks * self.block)
        factor = np.full((self.outer, self.length), INV_SQRT_BLOCK)
        factor[:, :self.lead] = 1.0
        return z.reshape(k, self.outer * self.length), factor.reshape(-1)


INV_SQRT2 = 1.0 / math.sqrt(2.0)
MIRROR_FLAG = 0x80
"""Bit of the header's token-block byte that says the two views are coded as mirrored sum/difference."""


@lru_cache(maxsize=16)
def mirror_permutation(length: int, side: int) -> np.ndarray:
    """Token order of a view mirrored left to right: the class token stays, patch (r, c) <-> (r, side-1-c)."""
    t = np.arange(length)
    r, c = np.divmod(t[1:] - 1, side)
    t[1:] = 1 + r * side + (side - 1 - c)
    return t


def mirror_side(shape: tuple[int, ...], axis: int, spec: SplitSpec) -> int:
    """Patch-grid side g when the tensor is 2 views x (1 + g*g) tokens of a split with views, else 0."""
    rest = [n for i, n in enumerate(shape) if i != axis]
    if "views" not in spec.layout or len(rest) != 2 or rest[0] != 2 or rest[1] < 2:
        return 0
    side = math.isqrt(rest[1] - 1)
    return side if side * side == rest[1] - 1 else 0


def mirror_correlation(y: np.ndarray, length: int, side: int, rows: int = 64) -> float:
    """Correlation of the two views at mirrored positions over the ``rows`` largest-energy rows."""
    energy = np.einsum("ij,ij->i", y, y)
    z = y[np.argsort(energy)[-rows:]].reshape(-1, 2, length).astype(np.float64)
    a = z[:, 0] - z[:, 0].mean(axis=1, keepdims=True)
    b = z[:, 1][:, mirror_permutation(length, side)]
    b = b - b.mean(axis=1, keepdims=True)
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else 0.0


def token_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """(outer, length) of a component row: ``length`` is the innermost non-channel axis (tokens, or
    width for a latent), ``outer`` the product of the others."""
    rest = [n for i, n in enumerate(shape) if i != axis]
    if not rest:
        return 1, 1
    length = int(rest[-1])
    return int(np.prod(rest[:-1], dtype=np.int64)), length


def _reconstruct(
    bands: Bands, q: list[np.ndarray], dc: np.ndarray, step: np.float32, transform: NativeTransform | None,
    channels: int,
) -> np.ndarray:
    """float32 (channels, outer * length) from band symbols ``q`` (int32 (K, size) each) and DCs ``dc``
    (int (dc_bands, K), units of step / MEAN_GRID), by element-wise IEEE operations on exact integers.

    ``G_b = MEAN_GRID * q_b + dc_b`` (integers), ``Z = synthesise(G)`` (integers, exact); without a channel
    transform ``x = float32(Z * (step / MEAN_GRID * factor))`` (rows past K are 0); with one ``x =
    float32((B.T @ Z) * (step / MEAN_GRID / 2**BASIS_BITS * factor) + mean)``. Raises `BitstreamError`
    when the transform's product could leave the range where float64 integer sums are exact.
    """
    k = q[0].shape[0]
    tokens = bands.outer * bands.length
    scale = np.float64(step) / MEAN_GRID
    if transform is None and not bands.block and not bands.mirror:  # the same operations in cache-sized blocks
        out = np.zeros((channels, tokens), np.float32)
        rows = max(1, BLOCK_ELEMENTS // 16 // max(tokens, 1))
        for c0 in range(0, k, rows):
            c1 = min(k, c0 + rows)
            block = np.multiply(q[0][c0:c1], float(MEAN_GRID), dtype=np.float64)
            block += dc[0, c0:c1].astype(np.float64)[:, None]
            block *= scale
            out[c0:c1] = np.clip(block, -FLOAT32_MAX, FLOAT32_MAX, out=block)
        return out

    def synthesised(c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        g = []
        for b, qb in enumerate(q):
            gb = np.multiply(qb[c0:c1], float(MEAN_GRID), dtype=np.float64)
            if b < bands.dc_bands and gb.size:
                gb += dc[b, c0:c1].astype(np.float64)[:, None]
            g.append(gb)
        return bands.synthesise(g)

    out = np.zeros((channels, tokens), np.float32)
    if transform is None:  # rows are independent: the same element-wise operations in row blocks
        rows = max(1, BLOCK_ELEMENTS // 16 // max(tokens, 1))
        for c0 in range(0, k, rows):
            c1 = min(k, c0 + rows)
            z, factor = synthesised(c0, c1)
            z *= scale if factor is None else scale * factor
            out[c0:c1] = np.clip(z, -FLOAT32_MAX, FLOAT32_MAX, out=z)
        return out
    z, factor = synthesised(0, k)
    if k == 0:
        out[:] = np.asarray(transform.mean, np.float64)[:, None]
        return out
    _, bt = integer_basis(transform)
    top = float(np.abs(bt[:, :k]).max()) * float(np.abs(z).sum(axis=0).max(initial=0.0))
    if not top < EXACT_LIMIT:
        raise BitstreamError(f"native transform product bound {top:.3g} is beyond 2**53: not exactly computable")
    prod = bt[:, :k] @ z  # every partial sum is an integer < 2**53: exact in any order
    colscale = scale / 2.0 ** BASIS_BITS
    prod *= colscale if factor is None else colscale * factor
    prod += np.asarray(transform.mean, np.float64)[:, None]
    out[:] = np.clip(prod, -FLOAT32_MAX, FLOAT32_MAX, out=prod)
    return out


LAMBDA = 2 * np.log(2) / 12
"""Lagrange multiplier of squared error per bit, in units of step**2 (high-rate uniform quantizer:
dD/dR = -2 ln 2 D, D = step**2 / 12); the encoder keeps a transform only where it lowers D + lambda R."""


def band_classes(classes: np.ndarray, offset: int) -> np.ndarray:
    """Scale class of every component in a band: ``clip(c + offset, 1, CLASSES - 1)``, 0 where ``c`` is 0."""
    return np.where(classes > 0, np.clip(classes + offset, 1, ne.CLASSES - 1), 0)


@dataclass(frozen=True)
class _Quantized:
    """Components quantized at one step in bands, with their entropy classes and estimated cost."""

    bands: Bands
    dc: np.ndarray
    """int64 (dc_bands, K)."""
    q: list[np.ndarray]
    tilt: int
    classes: np.ndarray
    """Per component (0: every band all zero)."""
    offsets: tuple[int, ...]
    """Class offset of each band."""
    cost: float
    """Squared error + LAMBDA * step**2 * (estimated symbol bits + about 6 side bits per coded component +
    `ANS_FLOOR_BITS` when any is coded; 8 per band offset in the header when none is) (0 error term when it
    was not asked for). The fixed costs keep the coarsest steps from picking a lone DC or a layout whose
    stream floor or header makes the payload larger than at a finer step."""

    @classmethod
    def of(cls, y: np.ndarray, step: np.float32, bands: Bands, with_error: bool) -> _Quantized:
        """Classes from a dead-zone quantization, then quantization
        with the thresholds that minimize squared error + RDO_LAMBDA * bits under each row's table
        (`_rdo_quantize`), then the classes of the result."""
        parts = bands.analyse(y)
        fresh = bands.block or bands.mirror  # the bands are new arrays (else band 0 is ``y`` itself)
        dcs, scaled = [], []
        while parts:
            part = parts.pop(0)
            b = len(scaled)
            dc = _dc(part, float(step)) if b < bands.dc_bands else None
            if fresh:
                part *= 1.0 / float(step)  # the same float32 product as ``part * (1 / step)``, in place
                s = part
            else:
                s = part * (1.0 / float(step))
            del part
            if dc is not None:
                s -= (dc / MEAN_GRID).astype(s.dtype)[:, None]
                dcs.append(dc)
            scaled.append(s)
        first = [_dead_zone_magnitudes(s) for s in scaled]  # their statistics
        tilt, classes, offsets, _ = ne.choose_band_classes(first)
        del first
        qs = [_rdo_quantize(s, band_classes(classes, o), tilt) for s, o in zip(scaled, offsets, strict=True)]
        tilt, classes, offsets, bits = ne.choose_band_classes(qs)
        error = 0.0
        if with_error:
            for s, q in zip(scaled, qs, strict=True):
                error += _squared_difference(s, q) * float(step) ** 2
        del scaled
        coded = int(np.count_nonzero((classes > 0) | np.any(np.stack(dcs) != 0, axis=0)))
        # fixed costs: the ANS stream's word once anything is coded; with nothing coded the payload is the
        # header alone, so the band offsets' header bytes decide between layouts
        side = 6.0 * coded + ANS_FLOOR_BITS if coded else (8 * len(offsets) if len(offsets) > 1 else 0)
        return cls(bands, np.stack(dcs), qs, tilt, classes, offsets,
                   error + LAMBDA * float(step) ** 2 * (bits + side))


ANS_FLOOR_BITS = 32
"""A nonempty ANS stream is at least one 32-bit word (an empty one: none)."""
RDO_LAMBDA = LAMBDA
"""Lagrange multiplier of the quantizer's decisions, squared steps per bit (measured: 0.5, 1, 1.5, 2 x
LAMBDA gave BD-rates on feature PSNR of -1.2/-2.8/-2.4/-1.4 % on tiny Cls and -2.0/-4.3/-4.2/-3.4 % on
small Cls against the plain dead zone; 1 x is kept)."""
MAX_ZERO_THRESHOLD = 1.0
"""Largest |value| in steps the quantizer rounds to 0 (so no error exceeds one step)."""
MAX_TAIL_THRESHOLD = 1.0
"""Largest fractional part rounded down above 0."""


def _dc(part: np.ndarray, step: float) -> np.ndarray:
    """Row means in units of step / MEAN_GRID (int64 (K,)); `SplitfcError` beyond `MAX_DC`."""
    dc = np.rint(part.mean(axis=1, dtype=np.float64) / (step / MEAN_GRID)) if part.shape[1] else np.zeros(len(part))
    if np.abs(dc).max(initial=0) > MAX_DC:
        raise SplitfcError("native cannot code these features: a channel mean spans more than 2**29 quantizer steps")
    return dc.astype(np.int64)


def _rdo_quantize(scaled: np.ndarray, classes: np.ndarray, tilt: int) -> np.ndarray:
    """int32 symbols of ``scaled`` (K, N; values in steps, DC removed) with per-row thresholds: 0 below
    ``t0 = 0.5 + lambda * (bits(1) - bits(0)) / 2``, else ``max(1, floor(|s| + 1 - t1))`` with ``t1 = 0.5
    + lambda * log2(1 / r) / 2`` (the geometric tail's cost per unit), capped at `MAX_ZERO_THRESHOLD` and
    `MAX_TAIL_THRESHOLD`; rows of class 0 use the dead zone ``t0 = t1 = 1 - (0.5 - DEAD_ZONE)``. Computed
    in row blocks of about `BLOCK_ELEMENTS` (element-wise: the same symbols as one pass)."""
    dead = 1.0 - (0.5 - DEAD_ZONE)
    t0 = np.full(len(scaled), dead)
    t1 = t0.copy()
    for j in np.unique(classes):
        if j:
            tab = ne.table(int(j), tilt)
            p = tab.probabilities
            rows = classes == j
            t0[rows] = 0.5 + RDO_LAMBDA * (np.log2(p[tab.half]) - np.log2(p[tab.half + 1])) / 2
            t1[rows] = 0.5 + RDO_LAMBDA * -np.log2(ne.SCALE_R[j - 1]) / 2
    t0 = np.clip(t0, 0.5, MAX_ZERO_THRESHOLD).astype(scaled.dtype)
    t1 = np.clip(t1, 0.5, MAX_TAIL_THRESHOLD).astype(scaled.dtype)
    out = np.empty(scaled.shape, np.int32)
    largest = 0.0
    for r0, r1 in _row_blocks(scaled):
        part = scaled[r0:r1]
        mag = np.abs(part)
        q = mag + (1.0 - t1[r0:r1])[:, None]
        np.floor(q, out=q)
        np.maximum(q, 1.0, out=q)
        q *= mag >= t0[r0:r1, None]
        np.copysign(q, part, out=q)
        if q.size:
            largest = max(largest, float(np.abs(q).max()))
        if largest > MAX_SYMBOL:
            raise SplitfcError("native cannot code these features: values span more than 2**26 quantizer steps")
        out[r0:r1] = q
    return out


def _dead_zone_magnitudes(scaled: np.ndarray) -> np.ndarray:
    """int32 ``floor(|scaled| + 0.5 - DEAD_ZONE)`` of float (K, N) values in steps, in row blocks (exact
    integers: `SplitfcError` first where a value reaches ``MAX_SYMBOL + 1`` steps, which `_rdo_quantize`
    would refuse anyway)."""
    out = np.empty(scaled.shape, np.int32)
    for r0, r1 in _row_blocks(scaled):
        f = np.abs(scaled[r0:r1])
        if f.size and float(f.max()) >= MAX_SYMBOL + 1:
            raise SplitfcError("native cannot code these features: values span more than 2**26 quantizer steps")
        f += 0.5 - DEAD_ZONE
        out[r0:r1] = np.floor(f, out=f)
    return out


def _row_blocks(a: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) row ranges of a 2-D array, about `BLOCK_ELEMENTS` elements each (at least one row)."""
    rows = max(1, BLOCK_ELEMENTS // max(a.shape[1], 1))
    return [(r0, min(len(a), r0 + rows)) for r0 in range(0, len(a), rows)]


def _squared_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``sum((a - b) ** 2)`` in float64 over row blocks of float ``a`` and int ``b`` (both (K, N)): no
    float64 copy of the whole tensor (the sum's rounding may differ from one pass; the encoder only)."""
    total = 0.0
    for r0, r1 in _row_blocks(a):
        d = np.subtract(a[r0:r1], b[r0:r1], dtype=np.float64)
        total += float(np.einsum("ij,ij->", d, d))
    return total


def adjacent_correlation(y: np.ndarray, length: int, rows: int = 64) -> float:
    """Correlation of adjacent positions along the token axis over the ``rows`` largest-energy rows."""
    if length < 2 or y.size == 0:
        return 0.0
    energy = np.einsum("ij,ij->i", y, y)
    pick = np.argsort(energy)[-rows:]
    z = y[pick].reshape(len(pick), -1, length).astype(np.float64)
    z = z - z.mean(axis=(1, 2), keepdims=True)
    den = float(np.sqrt(np.sum(z[..., 1:] ** 2) * np.sum(z[..., :-1] ** 2)))
    return float(np.sum(z[..., 1:] * z[..., :-1]) / den) if den > 0 else 0.0


@register_codec
class NativeCodec(Codec):
    """Feature-native codec: components (channels or fitted principal directions), optionally a token-axis
    Walsh-Hadamard transform, DCs, one dead-zone quantizer step, scale-class ANS entropy coding."""

    name: ClassVar[str] = "native"
    description: ClassVar[str] = ("feature-native: channel/PCA components (+ token WHT) + dead-zone scalar "
                                  "quantization + scale-class ANS (no packing)")
    truncation: ClassVar = None
    rate_name: ClassVar[str] = "step"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42, 47, 52)
    """Down to about 0.03 BPFP: fitted transforms on real features reach the frame codecs' lowest rates
    only at the coarse end (small-preset Cls: hevc QP 42 0.03 BPFP; native step 42 0.12)."""
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)
    min_payload_bits_per_element: ClassVar[float] = 2.0 ** -24
    """Below every real coding: a tensor costs at least the header (272 bits) whatever its size, so
    this admits at most 4.5e9 elements per header; symbol decoding is bounded separately by the
    classes' cheapest symbol (`native_entropy.Table.min_bits`) against the payload's bits."""

    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        """Code ``features`` (any float dtype, the split's layout); raises `NonFiniteError` on NaN/inf."""
        self.check_rate(rate)
        check_storable(features, "float32")
        axis = channel_axis(spec, features.ndim)
        moved = np.moveaxis(np.asarray(features, dtype=np.float32), axis, 0)
        x = np.ascontiguousarray(moved).reshape(features.shape[axis], -1)
        channels, tokens = x.shape
        if x.size:
            mean = x.mean(axis=1, dtype=np.float64)
            energy = np.einsum("ij,ij->i", x, x, dtype=np.float64) - tokens * mean ** 2
            rms = float(np.sqrt(max(float(energy.sum()), 0.0) / x.size))
        else:
            rms = 0.0
        if not rms > 1e-30:
            rms = max(float(np.max(np.abs(x))) if x.size else 0.0, 1.0)
        step = np.float32(rms * 2.0 ** ((rate - 32) / 6))
        if not (np.isfinite(step) and step > 0):
            raise SplitfcError(f"native cannot code these features: quantizer step {float(step)!r}")
        outer, length = token_shape(features.shape, axis)
        side = mirror_side(features.shape, axis, spec)
        transform = _find_transform(spec.id, channels)
        inputs: list[tuple[np.ndarray, NativeTransform | None]] = [(x, None)]
        if transform is not None:
            b, _ = integer_basis(transform)
            y = (b @ (x - np.asarray(transform.mean, np.float64)[:, None])) * 2.0 ** -BASIS_BITS
            inputs.insert(0, (y, transform))
            del y
        options = []  # per input: its extra layouts (token transform, mirrored views) worth trying
        for comps, _ in inputs:
            blocks = [0]
            if length >= TOKEN_BLOCK and adjacent_correlation(comps, length) > TOKEN_CORRELATION:
                blocks.append(TOKEN_BLOCK)
            layouts = [Bands(outer, length, block) for block in blocks[1:]]
            if side and mirror_correlation(comps, length, side) > TOKEN_CORRELATION:
                layouts += [Bands(outer, length, block, side) for block in blocks]
            options.append(layouts)
        del comps
        with_error = len(inputs) + max(len(o) for o in options) > 1
        # the components first (plain layout), then the other layouts of the better ones only; only the
        # cheapest candidate's symbols are kept (memory: about one quantized tensor, not one per layout),
        # the others are re-quantized (deterministically) only if a transform's product bound refuses it
        tried: list[tuple[float, int, Bands]] = []  # (cost, input, layout) in the order tried
        kept: _Quantized | None = None

        def consider(i: int, bands: Bands) -> None:
            nonlocal kept
            quantized = _Quantized.of(inputs[i][0], step, bands, with_error)
            tried.append((quantized.cost, i, bands))
            if kept is None or quantized.cost < kept.cost:
                kept = quantized
            del quantized

        for i in range(len(inputs)):
            consider(i, Bands(outer, length, 0))
        best = min(range(len(inputs)), key=lambda i: tried[i][0])
        for bands in options[best]:
            consider(best, bands)
        coded = None
        for n, (_, i, bands) in enumerate(sorted(tried, key=lambda c: c[0])):
            if n:  # the cheapest was refused: free it, quantize the next
                kept = _Quantized.of(inputs[i][0], step, bands, with_error)
            assert kept is not None
            tr = inputs[i][1]
            if tr is None:  # never refused: the components are no longer needed (frees a copy)
                inputs.clear()
                x = None
            coded = self._code(kept, step, tr, channels)
            if coded is not None:
                break
        assert coded is not None  # without a transform the product is element-wise: never refused
        del kept, x, moved
        inputs.clear()
        payload, recon = coded
        del coded
        # what the decoder returns: float16 stays float16, bfloat16 (no numpy dtype) decodes to float32
        out_dtype = np.dtype(np.float16) if features.dtype == np.float16 else np.dtype(np.float32)
        out = self._to_layout(recon, features.shape, axis, out_dtype)
        return Encoded(payload, None, {"native": f"v{VERSION}"}, content_digest(out))

    @staticmethod
    def _code(
        quantized: _Quantized, step: np.float32, transform: NativeTransform | None, channels: int,
    ) -> tuple[bytes, np.ndarray] | None:
        """Payload and float32 (channels, N) reconstruction of quantized components; None when a
        transform's exact product bound would be exceeded (the caller codes without it)."""
        dc, tilt, classes, offsets, bands = (quantized.dc, quantized.tilt, quantized.classes,
                                             quantized.offsets, quantized.bands)
        nonzero = np.flatnonzero((classes > 0) | np.any(dc != 0, axis=0))
        k = int(nonzero[-1]) + 1 if nonzero.size else 0
        q = [qb[:k] for qb in quantized.q]
        dc, classes = dc[:, :k], classes[:k]
        try:
            recon = _reconstruct(bands, q, dc, step, transform, channels)
        except BitstreamError:
            return None
        deltas = np.diff(classes, prepend=0)
        side = ne.choose_class(deltas) if k else (0, 0)
        dc_class = ne.choose_class(dc.ravel()) if k else (0, 0)
        writer = ne.SymbolWriter()
        writer.add(deltas, *side)
        writer.add(dc.ravel(), *dc_class)
        for qb, offset in zip(q, offsets, strict=True):
            for rows, j in _class_groups(band_classes(classes, offset)):
                lo = int(rows[0])
                if rows[-1] - lo + 1 == len(rows) and np.all(np.diff(rows) == 1):  # a view, not a copy
                    writer.add(qb[lo:lo + len(rows)].ravel(), j, tilt)
                else:
                    writer.add(qb[rows].ravel(), j, tilt)
        tid = transform.transform_id if transform is not None else NO_TRANSFORM
        layout = bands.block | (MIRROR_FLAG if bands.mirror else 0)
        header = HEADER.pack(VERSION, tid, step, channels, k, tilt, *side, *dc_class, layout)
        if len(offsets) > 1:
            header += struct.pack(f"<{len(offsets)}b", *offsets)
        return header + writer.finish(), recon

    @staticmethod
    def _to_layout(recon: np.ndarray, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> np.ndarray:
        """float32 (channels, N) reconstruction -> ``shape`` in ``dtype`` (float32 or float16; float16 clipped
        to its finite range first)."""
        moved = (shape[axis], *shape[:axis], *shape[axis + 1:])
        out = np.ascontiguousarray(np.moveaxis(recon.reshape(moved), 0, axis))
        if np.dtype(dtype) == np.float16:
            top = float(np.finfo(np.float16).max)
            out = np.clip(out, -top, top)
        return out.astype(dtype, copy=False)

    def decode(
        self, coded: Encoded, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype, rate: int,
    ) -> np.ndarray:
        self.check_rate(rate)
        version = coded.extra.get("native")
        if version != f"v{VERSION}":
            raise BitstreamError(f"native bitstream of version {quote(str(version))}, this decoder reads v{VERSION}")
        payload = coded.payload
        if len(payload) < HEADER.size:
            raise BitstreamError(f"native payload has {len(payload)} bytes, shorter than its {HEADER.size}-byte header")
        got_version, tid, step, channels, k, tilt, side_j, side_t, dc_j, dc_t, layout = HEADER.unpack_from(payload)
        block = layout & ~MIRROR_FLAG
        axis = channel_axis(spec, len(shape))
        if got_version != VERSION:
            raise BitstreamError(f"native payload header is corrupt (version {got_version})")
        if channels != shape[axis]:
            raise BitstreamError(f"native payload codes {channels} channels, the header's shape {shape} has "
                                 f"{shape[axis]} on its channel axis")
        if k > channels:
            raise BitstreamError(f"native payload codes {k} components of {channels} channels")
        if tilt >= len(ne.TILT_EIGHTHS):
            raise BitstreamError(f"native payload names tilt {tilt}, there are {len(ne.TILT_EIGHTHS)}")
        outer, length = token_shape(shape, axis)
        if block not in (0, TOKEN_BLOCK) or block > length:
            raise BitstreamError(f"native payload names a token block of {block} for {length} tokens")
        mirror = mirror_side(shape, axis, spec) if layout & MIRROR_FLAG else 0
        if layout & MIRROR_FLAG and not mirror:
            raise BitstreamError(f"native payload codes mirrored views, the shape {shape} has no 2 views of a grid")
        bands = Bands(outer, length, block, mirror)
        start = HEADER.size
        offsets: tuple[int, ...] = (0,)
        if len(bands.sizes) > 1:
            start += len(bands.sizes)
            if len(payload) < start:
                raise BitstreamError(f"native payload has {len(payload)} bytes, shorter than its header")
            offsets = struct.unpack_from(f"<{len(bands.sizes)}b", payload, HEADER.size)
        step = np.float32(step)
        if not (np.isfinite(step) and step > 0):
            raise BitstreamError(f"native payload has an invalid quantizer step {float(step)!r}")
        transform = None
        if tid != NO_TRANSFORM:
            transform = _get_transform(tid)
            if transform.channels != channels:
                raise BitstreamError(f"native transform {tid.hex()} has {transform.channels} channels, the "
                                     f"payload codes {channels}")
        reader = ne.SymbolReader(payload[start:])
        classes = np.cumsum(reader.read(k, side_j, side_t), dtype=np.int64)
        if k and (classes.min() < 0 or classes.max() >= ne.CLASSES):
            raise BitstreamError(f"native payload names scale classes outside 0..{ne.CLASSES - 1}")
        per_band = [band_classes(classes, offset) for offset in offsets]
        least = 0.0
        for size, cb in zip(bands.sizes, per_band, strict=True):
            for j, n in zip(*np.unique(cb, return_counts=True), strict=True):
                least += ne.table(int(j), tilt).min_bits * size * int(n) if j else 0.0
        if least > reader.bits + 64:
            raise BitstreamError(f"native payload of {reader.bits} coded bits is too short for its classes "
                                 f"(at least {least:.0f} bits)")
        dc = reader.read(bands.dc_bands * k, dc_j, dc_t).reshape(bands.dc_bands, k)
        q = []
        for size, cb in zip(bands.sizes, per_band, strict=True):
            qb = np.zeros((k, size), np.int32)
            for rows, j in _class_groups(cb) if size else ():
                qb[rows] = reader.read(len(rows) * size, j, tilt).reshape(-1, size)
            q.append(qb)
        reader.check_done()
        recon = _reconstruct(bands, q, dc, step, transform, channels)
        out = self._to_layout(recon, shape, axis, np.dtype(dtype))
        verify_digest(out, coded.digest, "codec native", coded.header)
        return out


def _class_groups(classes: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(component indices, class) for every nonzero class present, in ascending class order."""
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    bounds = np.flatnonzero(np.diff(sorted_classes, prepend=-1, append=ne.CLASSES + 1))
    return [(order[lo:hi], int(sorted_classes[lo])) for lo, hi in itertools.pairwise(bounds) if sorted_classes[lo]]
