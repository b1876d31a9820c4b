"""The codec interface: one codec is one module with one `Codec` subclass.

A codec turns a feature tensor of a split into payload bytes and back.
Frame codecs (VVC, HEVC, learned image codecs) share the paper's
pre-processing through `FrameCodec` and only implement ``encode_frame`` /
``decode_frame`` on a packed ``bit_depth``-bit 2-D frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from splitfc.common.errors import BitstreamError, CodecUnavailableError, HeaderError
from splitfc.common.integrity import content_digest, verify_digest
from splitfc.common.preprocess import DEFAULT_BIT_DEPTH, FrameInfo, FramePlan
from splitfc.common.specs import SplitSpec, TruncationColumn


class CodedFrame(NamedTuple):
    """What `FrameCodec.encode_frame` returns."""

    payload: bytes
    extra: dict[str, str]
    reconstruction: np.ndarray | None = None
    """The uint16 frame a decoder reconstructs, when the encoder computes it anyway (else None)."""


@dataclass
class Encoded:
    """A coded tensor: what ``encode`` returns and ``decode`` takes back (all of it travels in the bitstream).

    ``digest`` is the `content_digest` of what the decoder must reconstruct (see
    `splitfc.common.integrity`); decoders verify it and raise `IntegrityError`.
    """

    payload: bytes
    frame: FrameInfo | None = None
    extra: dict[str, str] = field(default_factory=dict)
    digest: bytes = b""
    header: bytes | None = None
    """On decode: the bitstream's header bytes, to which ``digest`` is bound (`integrity.bind_digest`);
    None when ``digest`` is the bare content digest (as ``encode`` returns it)."""


class Codec(ABC):
    """A feature codec. Subclasses set the class attributes and implement encode/decode."""

    name: ClassVar[str]
    description: ClassVar[str]
    truncation: ClassVar[TruncationColumn | None] = None
    """Which Table 4 column the codec's pre-processing uses; None for no pre-processing."""
    rate_name: ClassVar[str] = "qp"
    """What the integer rate knob means: 'qp', 'quality' or 'none'."""
    rates: ClassVar[tuple[int, ...]] = ()
    """The paper's rate points, lowest quality last for QPs."""
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)
    min_payload_bits_per_element: ClassVar[float] = 0.0
    """Fewest payload bits per feature element any encoder of this codec produces (measured, with margin).

    `validate_bitstream` refuses a payload below it before decoding, so decode work is bounded by what the
    payload carries. 0: no bound.
    """

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the codec can run here, else one line saying what is missing."""
        return None

    @classmethod
    def require_available(cls) -> None:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise CodecUnavailableError(f"codec {cls.name} is unavailable: {reason}")

    @classmethod
    def check_rate(cls, rate: int) -> None:
        """Raise `HeaderError` (a `ValueError`) unless ``rate`` is in ``rate_bounds`` (encode and decode)."""
        lo, hi = cls.rate_bounds
        if not lo <= rate <= hi:
            raise HeaderError(f"codec {cls.name} takes {cls.rate_name} in [{lo}, {hi}], got {rate}")

    @abstractmethod
    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        """Code one feature tensor of ``spec`` at ``rate``; the result carries the reconstruction's digest."""

    @abstractmethod
    def decode(
        self, coded: Encoded, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype, rate: int,
    ) -> np.ndarray:
        """Reconstruct the tensor of ``shape`` and ``dtype`` from ``coded``.

        Raises `IntegrityError` when the reconstruction's digest is not ``coded.digest``.
        """


class FrameCodec(Codec):
    """A codec over the paper's packed, quantized 2-D frame."""

    bit_depth: ClassVar[int] = DEFAULT_BIT_DEPTH

    @abstractmethod
    def encode_frame(self, frame: np.ndarray, rate: int, spec: SplitSpec | None = None) -> CodedFrame:
        """Code a uint16 frame of ``bit_depth`` bits of split ``spec`` (None: a bare frame).

        Returns the payload, the extras for the header and, where the encoder has it, the frame a
        decoder reconstructs (else `encode` decodes the payload once to compute the digest).
        """

    @abstractmethod
    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str],
        spec: SplitSpec | None = None,
    ) -> np.ndarray:
        """Decode a frame of exactly ``height`` x ``width`` (uint16) of split ``spec``."""

    def plan(self, spec: SplitSpec, shape: tuple[int, ...]) -> FramePlan:
        assert self.truncation is not None
        return FramePlan(spec, tuple(shape), spec.ranges(self.truncation), self.bit_depth)

    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        self.check_rate(rate)
        plan = self.plan(spec, features.shape)
        frame = plan.to_frame(features)
        coded = self.encode_frame(frame, rate, spec)
        h, w = frame.shape
        info = FrameInfo(plan.ranges, plan.bit_depth, spec.packing, h, w)
        recon = coded.reconstruction
        if recon is None:
            recon = self.decode_frame(coded.payload, h, w, rate, coded.extra, spec)
        return Encoded(coded.payload, info, coded.extra, content_digest(recon))

    def decode_checked_frame(self, coded: Encoded, rate: int, spec: SplitSpec | None = None) -> np.ndarray:
        """``decode_frame`` of ``coded`` with its size and integrity digest checked (uint16, H x W)."""
        frame = coded.frame
        if frame is None:
            raise BitstreamError(f"codec {self.name} needs pre-processing parameters in the header")
        decoded = self.decode_frame(coded.payload, frame.frame_height, frame.frame_width, rate, coded.extra, spec)
        if decoded.shape != (frame.frame_height, frame.frame_width):
            raise BitstreamError(
                f"codec {self.name} decoded a {decoded.shape} frame, "
                f"expected {(frame.frame_height, frame.frame_width)}"
            )
        if frame.bit_depth != self.bit_depth:
            raise HeaderError(f"codec {self.name} codes {self.bit_depth}-bit frames, the header says {frame.bit_depth}")
        verify_digest(decoded, coded.digest, f"codec {self.name}", coded.header)
        return decoded

    def decode(
        self, coded: Encoded, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype, rate: int,
    ) -> np.ndarray:
        decoded = self.decode_checked_frame(coded, rate, spec)
        assert coded.frame is not None
        plan = FramePlan(spec, tuple(shape), coded.frame.ranges, coded.frame.bit_depth)
        return plan.from_frame(decoded).astype(dtype, copy=False)
