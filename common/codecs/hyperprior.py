"""``hyperprior``: CompressAI's scale hyperprior (Ballé 2018) on the packed frame (paper Section 6.1.2).

The frame is the paper's pre-processing with the Hyperprior truncation column
of Table 4 and 10-bit quantization, normalised to [0, 1], padded by edge
replication to a multiple of 64 (frames larger than the checkpoint's tile size
are cut into tiles coded independently) and cropped back after decoding.
Coding goes through CompressAI's rANS coder with the checkpoint's CDF tables;
the CDF indexes come from an integer-exact hyper-synthesis, so the decoder
picks the same CDFs as the encoder on any CPU (`splitfc.common.learned.model`).
The bitstream's digest is of the reconstruction the encoder computes from its
own quantized latents; `decode` verifies it.

The rate knob is a quality index 1..5 (``--quality``, or ``--qp`` as its
alias): one checkpoint per λ, quality 1 the lowest rate. Checkpoints are looked
up as ``<dir>/<split>/q<quality>.safetensors`` where ``<dir>`` is
``SPLITFC_HYPERPRIOR_DIR`` or the shipped ``checkpoints/hyperprior`` folder.
The bitstream's ``codec.extra`` carries ``checkpoint`` (sha256 of the weights)
and ``checkpoint_split``; decoding with any other checkpoint is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs.base import Encoded, FrameCodec, FrameInfo
from splitfc.common.errors import BitstreamError, SplitfcError
from splitfc.common.integrity import content_digest, verify_digest
from splitfc.common.specs import SplitSpec, TruncationColumn, get_split

if TYPE_CHECKING:
    from splitfc.common.learned.checkpoint import HyperpriorConfig
    from splitfc.common.learned.model import FeatureHyperprior

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints" / "hyperprior"


def checkpoint_dir() -> Path:
    """The checkpoint folder in use (``SPLITFC_HYPERPRIOR_DIR`` or the shipped one)."""
    from splitfc.common.settings import hyperprior_settings

    return hyperprior_settings().hyperprior_dir or SHIPPED_DIR


def checkpoint_path(split: str, quality: int, directory: Path | None = None) -> Path:
    """Where the checkpoint of ``split`` at ``quality`` lives."""
    return Path(directory or checkpoint_dir()) / split / f"q{quality}.safetensors"


@register_codec
class HyperpriorCodec(FrameCodec):
    """Learned baseline: one checkpoint per split and quality 1..5 (1 = lowest rate)."""

    name: ClassVar[str] = "hyperprior"
    description: ClassVar[str] = "CompressAI scale hyperprior (Ballé 2018), 1-channel, one checkpoint per λ"
    truncation: ClassVar[TruncationColumn | None] = TruncationColumn.HYPERPRIOR
    rate_name: ClassVar[str] = "quality"
    rates: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    rate_bounds: ClassVar[tuple[int, int]] = (1, 5)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        directory = checkpoint_dir()
        if not any(directory.glob("*/q*.safetensors")):
            return f"no checkpoints in {directory} (splitfc train-codec, or set SPLITFC_HYPERPRIOR_DIR)"
        return None

    def __init__(self, directory: Path | None = None, source_split: str | None = None) -> None:
        """``directory`` overrides the checkpoint folder; ``source_split`` codes every split with the
        checkpoints trained for that split (the generalizability run of paper Table 6)."""
        self.directory = Path(directory) if directory is not None else None
        self.source_split = get_split(source_split).id if source_split is not None else None

    def model_for(self, split: str, quality: int) -> tuple[FeatureHyperprior, HyperpriorConfig]:
        """The loaded checkpoint for ``split`` at ``quality``."""
        from splitfc.common.learned.engine import load_cached

        self.check_rate(quality)
        return load_cached(checkpoint_path(split, quality, self.directory), split)

    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        self.check_rate(rate)
        source = self.source_split or spec.id
        model, cfg = self.model_for(source, rate)
        plan = self.plan(spec, features.shape)
        frame = plan.to_frame(features)
        from splitfc.common.learned.engine import encode_with

        # The digest is of the reconstruction from the encoder's own quantized latents (no entropy decoding),
        # so a decoder whose symbols or CDF indexes differ from the encoder's fails `verify_digest`.
        payload, recon = encode_with(model, cfg, frame, plan.bit_depth)
        h, w = frame.shape
        info = FrameInfo(plan.ranges, plan.bit_depth, spec.packing, h, w)
        extra = {"checkpoint": cfg.checkpoint_id, "checkpoint_split": cfg.split}
        return Encoded(payload, info, extra, content_digest(recon))

    def decode(
        self, coded: Encoded, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype, rate: int,
    ) -> np.ndarray:
        frame, extra = coded.frame, coded.extra
        if frame is None:
            raise BitstreamError("hyperprior bitstream lacks pre-processing parameters")
        self.check_rate(rate)
        wanted = extra.get("checkpoint")
        if not wanted:
            raise BitstreamError("hyperprior bitstream does not name the checkpoint that coded it")
        source = extra.get("checkpoint_split") or spec.id
        try:
            source = get_split(source).id
        except SplitfcError:
            raise BitstreamError(f"hyperprior bitstream names an unknown checkpoint split {source!r}") from None
        model, cfg = self.model_for(source, rate)
        if cfg.checkpoint_id != wanted:
            raise BitstreamError(
                f"bitstream was coded with hyperprior checkpoint {wanted[:12]}, but {source} quality {rate} "
                f"here is {cfg.checkpoint_id[:12]} ({checkpoint_path(source, rate, self.directory)}); "
                "decode with the checkpoint that coded it"
            )
        from splitfc.common.learned.engine import decode_with
        from splitfc.common.preprocess import FramePlan

        plan = FramePlan(spec, tuple(shape), frame.ranges, frame.bit_depth)
        decoded = decode_with(model, coded.payload, frame.frame_height, frame.frame_width, frame.bit_depth)
        verify_digest(decoded, coded.digest, f"codec {self.name}")
        return plan.from_frame(decoded).astype(dtype, copy=False)

    def encode_frame(self, frame: np.ndarray, rate: int) -> tuple[bytes, dict[str, str]]:
        """Frame-level coding needs a split to pick the checkpoint: construct with ``source_split``."""
        if self.source_split is None:
            raise SplitfcError("hyperprior codes frames with a split's checkpoint: pass source_split")
        from splitfc.common.learned.engine import encode_with

        model, cfg = self.model_for(self.source_split, rate)
        payload, _ = encode_with(model, cfg, frame, self.bit_depth)
        return payload, {"checkpoint": cfg.checkpoint_id, "checkpoint_split": cfg.split}

    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str]
    ) -> np.ndarray:
        source = extra.get("checkpoint_split") or self.source_split
        if source is None:
            raise BitstreamError("hyperprior frame payload does not name its checkpoint split")
        model, cfg = self.model_for(get_split(source).id, rate)
        if extra.get("checkpoint") != cfg.checkpoint_id:
            raise BitstreamError("hyperprior frame was coded with another checkpoint")
        from splitfc.common.learned.engine import decode_with

        return decode_with(model, payload, height, width, self.bit_depth)
