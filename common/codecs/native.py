"""``native``: a feature-native codec: the tensor is coded as it is, with no image packing (v2).

Parts (each chosen by a measurement in README.md, "The native codec"):

1. Components: the channels of the split's layout (channel-major, each channel's tokens contiguous),
   or, where a transform for the split is known (`native_transform.find_native_transform`), the
   coefficients ``y = Bq @ (x - mean)`` of its principal directions, with ``Bq = rint(basis * 2**20)
   / 2**20`` (the integer basis the decoder uses: closed loop).
2. Per-component DC (mean over tokens) on a grid of ``step / MEAN_GRID``, sent as integers (the
   massive-activation channels of large models, paper Table 4, are mostly a per-channel offset).
3. Uniform dead-zone scalar quantization with one step for the whole tensor (MSE-optimal across
   components, task-agnostic): ``step = rms * 2**((rate - 32) / 6)``, ``rms`` the root mean square
   of the channel-mean-removed tensor; the rate knob doubles the step every 6 like an H.265 QP, so it
   is monotonic (higher rate = coarser = fewer bits).
4. Entropy coding (`native_entropy`): one scale class per component and one tilt per tensor chosen
   by the encoder (a two-sided geometric law per class), the class indices (delta-coded) and DCs
   coded with a class of their own, all through constriction's ANS coder, one call per class.
   Components past the last nonzero one are not coded (``K`` in the header).

No fitting is needed (without a transform everything travels in the payload). Decoding is
integer-exact up to the final dequantization: ``G = MEAN_GRID * q + dc`` are integers; without a
transform ``x = float32(G * (step / MEAN_GRID))``; with one ``x = float32((B.T @ G) * (step /
MEAN_GRID / 2**20) + mean)``, where ``B.T @ G`` is a float64 product of integer matrices whose every
partial sum is an integer below 2**53 (checked: ``max|B| * max_n sum_k |G_kn| < 2**53``, else the
encoder falls back to no transform and the decoder refuses), so any BLAS, thread count or summation
order gives the same bits. The encoder computes its reconstruction with the decoder's function; the
integrity digest covers it.

Payload: `HEADER` (``<B version><8s transform id, zeros: none><f4 step><I channels><I K>
<B tilt><B class-index class><B class-index tilt><B DC class><B DC tilt>``) then the ANS words
(little-endian uint32): the K class-index deltas, the K DCs, then the symbols of every class in
ascending class order (components in order, tokens in order; escapes after each class).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
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
HEADER = struct.Struct("<B8sfIIBBBBB")
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


def _reconstruct(
    q: np.ndarray, dc: np.ndarray, step: np.float32, transform: NativeTransform | None, channels: int,
) -> np.ndarray:
    """float32 (channels, N) from the symbols ``q`` (int32 (K, N)) and DCs ``dc`` (int (K,), units of
    step / MEAN_GRID), element-wise or through an exact integer product only.

    Without a transform: ``float32(float64(q) * step + dc * (step / MEAN_GRID))`` (each product and the
    sum rounded once, IEEE; rows past K are 0). With one: ``float32((B.T @ G) * (step / MEAN_GRID /
    2**BASIS_BITS) + mean)``, ``G = MEAN_GRID * q + dc``. Raises `BitstreamError` when the transform's
    product could leave the range where float64 integer sums are exact.
    """
    k, tokens = q.shape
    out = np.zeros((channels, tokens), np.float32)
    step64 = np.float64(step)
    scale = step64 / MEAN_GRID
    if transform is None:
        dcs = dc.astype(np.float64) * scale
        rows = max(1, BLOCK_ELEMENTS // 16 // max(tokens, 1))  # blocks that stay in cache
        for c0 in range(0, k, rows):
            c1 = min(k, c0 + rows)
            block = np.multiply(q[c0:c1], step64, dtype=np.float64)
            block += dcs[c0:c1, None]
            out[c0:c1] = block
        return out
    if k == 0:
        out[:] = np.asarray(transform.mean, np.float64)[:, None]
        return out
    _, bt = integer_basis(transform)
    g = np.multiply(q, float(MEAN_GRID), dtype=np.float64)
    g += dc.astype(np.float64)[:, None]  # integers, |.| < 2**35
    top = float(np.abs(bt[:, :k]).max()) * float(np.abs(g).sum(axis=0).max(initial=0.0))
    if not top < EXACT_LIMIT:
        raise BitstreamError(f"native transform product bound {top:.3g} is beyond 2**53: not exactly computable")
    prod = bt[:, :k] @ g  # every partial sum is an integer < 2**53: exact in any order
    prod *= scale / 2.0 ** BASIS_BITS
    prod += np.asarray(transform.mean, np.float64)[:, None]
    out[:] = prod
    return out


def _quantize(y: np.ndarray, step: float, with_error: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-row DC (int64 (K,), units step / MEAN_GRID), dead-zone symbols (int32 (K, N)) of ``y``
    (float32 or float64 (K, N); the encoder's decisions need not be reproducible, only the decoder's)
    and, with ``with_error``, the squared error of the coefficients (else 0)."""
    fine_step = step / MEAN_GRID
    dc = np.rint(y.mean(axis=1, dtype=np.float64) / fine_step) if y.shape[1] else np.zeros(y.shape[0])
    if np.abs(dc).max(initial=0) > MAX_DC:
        raise SplitfcError("native cannot code these features: a channel mean spans more than 2**29 quantizer steps")
    scaled = y * (1.0 / step)
    scaled -= (dc / MEAN_GRID).astype(y.dtype)[:, None]
    exact = scaled.copy() if with_error else None
    scaled += np.copysign(np.asarray(0.5 - DEAD_ZONE, y.dtype), scaled)
    np.trunc(scaled, out=scaled)
    largest = max(float(scaled.max()), -float(scaled.min())) if scaled.size else 0.0
    if largest > MAX_SYMBOL:
        raise SplitfcError("native cannot code these features: values span more than 2**26 quantizer steps")
    error = 0.0
    if exact is not None:
        exact -= scaled
        error = float(np.einsum("ij,ij->", exact, exact, dtype=np.float64)) * step * step
    return dc.astype(np.int64), scaled.astype(np.int32), error


LAMBDA = 2 * np.log(2) / 12
"""Lagrange multiplier of squared error per bit, in units of step**2 (high-rate uniform quantizer:
dD/dR = -2 ln 2 D, D = step**2 / 12); the encoder keeps a transform only where it lowers D + lambda R."""


@dataclass(frozen=True)
class _Quantized:
    """Components quantized at one step, with their entropy classes and estimated cost."""

    dc: np.ndarray
    q: np.ndarray
    tilt: int
    classes: np.ndarray
    cost: float
    """Squared error + LAMBDA * step**2 * (estimated symbol bits + about 6 side bits per coded component)
    (0 error term when it was not asked for)."""

    @classmethod
    def of(cls, y: np.ndarray, step: np.float32, with_error: bool) -> _Quantized:
        dc, q, error = _quantize(y, float(step), with_error)
        tilt, classes, bits = ne.choose_classes(q)
        side = 6.0 * int(np.count_nonzero((classes > 0) | (dc != 0)))
        return cls(dc, q, tilt, classes, error + LAMBDA * float(step) ** 2 * (bits + side))


@register_codec
class NativeCodec(Codec):
    """Feature-native codec: components (channels or fitted principal directions), DCs, one dead-zone
    quantizer step, scale-class ANS entropy coding."""

    name: ClassVar[str] = "native"
    description: ClassVar[str] = ("feature-native: channel/PCA components + dead-zone scalar quantization "
                                  "+ scale-class ANS (no packing)")
    truncation: ClassVar = None
    rate_name: ClassVar[str] = "step"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42, 47, 52)
    """Down to about 0.03 BPFP: fitted transforms on real features reach the frame codecs' lowest rates
    only at the coarse end (small-preset Cls: hevc QP 42 0.03 BPFP; native step 42 0.12)."""
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)
    min_payload_bits_per_element: ClassVar[float] = 2.0 ** -24
    """Below every real coding: a tensor costs at least the header (264 bits) whatever its size, so
    this admits at most 4.4e9 elements per header; symbol decoding is bounded separately by the
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
        transform = _find_transform(spec.id, channels)
        plain = _Quantized.of(x, step, transform is not None)
        coded = None
        if transform is not None:
            b, _ = integer_basis(transform)
            y = (b @ (x - np.asarray(transform.mean, np.float64)[:, None])) * 2.0 ** -BASIS_BITS
            fitted = _Quantized.of(y, step, True)
            if fitted.cost < plain.cost:  # the transform is kept only where it pays (estimate)
                coded = self._code(fitted, step, transform, channels)
        if coded is None:
            coded = self._code(plain, step, None, channels)
        assert coded is not None
        payload, recon = coded
        out = self._to_layout(recon, features.shape, axis, features.dtype)
        return Encoded(payload, None, {"native": f"v{VERSION}"}, content_digest(out))

    @staticmethod
    def _code(
        quantized: _Quantized, step: np.float32, transform: NativeTransform | None, channels: int,
    ) -> tuple[bytes, np.ndarray] | None:
        """Payload and float32 (channels, N) reconstruction of quantized components; None when a
        transform's exact product bound would be exceeded (the caller codes without it)."""
        dc, q, tilt, classes = quantized.dc, quantized.q, quantized.tilt, quantized.classes
        nonzero = np.flatnonzero((classes > 0) | (dc != 0))
        k = int(nonzero[-1]) + 1 if nonzero.size else 0
        q, dc, classes = q[:k], dc[:k], classes[:k]
        order = np.argsort(classes, kind="stable")
        try:
            recon = _reconstruct(q, dc, step, transform, channels)
        except BitstreamError:
            return None
        deltas = np.diff(classes, prepend=0)
        side = ne.choose_class(deltas) if k else (0, 0)
        dc_class = ne.choose_class(dc) if k else (0, 0)
        writer = ne.SymbolWriter()
        writer.add(deltas, *side)
        writer.add(dc, *dc_class)
        by_class = q[order]
        sorted_classes = classes[order]
        bounds = np.flatnonzero(np.diff(sorted_classes, prepend=-1, append=ne.CLASSES + 1))
        for lo, hi in itertools.pairwise(bounds):
            writer.add(by_class[lo:hi].ravel(), int(sorted_classes[lo]), tilt)
        tid = transform.transform_id if transform is not None else NO_TRANSFORM
        header = HEADER.pack(VERSION, tid, step, channels, k, tilt, *side, *dc_class)
        return header + writer.finish(), recon

    @staticmethod
    def _to_layout(recon: np.ndarray, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> np.ndarray:
        moved = (shape[axis], *shape[:axis], *shape[axis + 1:])
        return np.ascontiguousarray(np.moveaxis(recon.reshape(moved), 0, axis)).astype(dtype, copy=False)

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
        got_version, tid, step, channels, k, tilt, side_j, side_t, dc_j, dc_t = HEADER.unpack_from(payload)
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
        step = np.float32(step)
        if not (np.isfinite(step) and step > 0):
            raise BitstreamError(f"native payload has an invalid quantizer step {float(step)!r}")
        transform = None
        if tid != NO_TRANSFORM:
            transform = _get_transform(tid)
            if transform.channels != channels:
                raise BitstreamError(f"native transform {tid.hex()} has {transform.channels} channels, the "
                                     f"payload codes {channels}")
        count = int(np.prod(shape))
        tokens = count // channels if channels else 0
        reader = ne.SymbolReader(payload[HEADER.size:])
        classes = np.cumsum(reader.read(k, side_j, side_t), dtype=np.int64)
        if k and (classes.min() < 0 or classes.max() >= ne.CLASSES):
            raise BitstreamError(f"native payload names scale classes outside 0..{ne.CLASSES - 1}")
        least = sum(ne.table(int(j), tilt).min_bits * tokens * int(n)
                    for j, n in zip(*np.unique(classes, return_counts=True), strict=True) if j)
        if least > reader.bits + 64:
            raise BitstreamError(f"native payload of {reader.bits} coded bits is too short for its classes "
                                 f"(at least {least:.0f} bits)")
        dc = reader.read(k, dc_j, dc_t)
        order = np.argsort(classes, kind="stable")
        sorted_classes = classes[order]
        by_class = np.zeros((k, tokens), np.int32)
        bounds = np.flatnonzero(np.diff(sorted_classes, prepend=-1, append=ne.CLASSES + 1))
        for lo, hi in itertools.pairwise(bounds):
            by_class[lo:hi] = reader.read((hi - lo) * tokens, int(sorted_classes[lo]), tilt).reshape(-1, tokens)
        reader.check_done()
        q = np.empty_like(by_class)
        q[order] = by_class
        out = self._to_layout(_reconstruct(q, dc, step, transform, channels), shape, axis, np.dtype(dtype))
        verify_digest(out, coded.digest, "codec native", coded.header)
        return out
