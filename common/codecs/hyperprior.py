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
from splitfc.common.codecs.base import CodedFrame, FrameCodec
from splitfc.common.errors import BitstreamError, SplitfcError
from splitfc.common.specs import SplitSpec, TruncationColumn, get_split
from splitfc.common.untrusted import quote

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
    min_payload_bits_per_element: ClassVar[float] = 1 / 16384  # flat frame, quality 1: 1.4e-4 (docs/hardening.md)

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

    def _source_split(self, spec: SplitSpec | None, extra: dict[str, str] | None = None) -> str:
        """Whose checkpoints code this frame: the bitstream's ``checkpoint_split``, else ``source_split``,
        else the frame's own split."""
        named = (extra or {}).get("checkpoint_split") or self.source_split or (spec.id if spec else None)
        if named is None:
            raise SplitfcError("hyperprior codes frames with a split's checkpoint: give the split or source_split")
        try:
            return get_split(named).id
        except SplitfcError:
            raise BitstreamError(
                f"hyperprior bitstream names an unknown checkpoint split {quote(named)}"
            ) from None

    def encode_frame(self, frame: np.ndarray, rate: int, spec: SplitSpec | None = None) -> CodedFrame:
        """The payload and the reconstruction from the encoder's own quantized latents (no entropy
        decoding), so a decoder whose symbols or CDF indexes differ from the encoder's fails the digest."""
        from splitfc.common.learned.engine import encode_with

        model, cfg = self.model_for(self._source_split(spec), rate)
        payload, recon = encode_with(model, cfg, frame, self.bit_depth)
        return CodedFrame(payload, {"checkpoint": cfg.checkpoint_id, "checkpoint_split": cfg.split}, recon)

    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str],
        spec: SplitSpec | None = None,
    ) -> np.ndarray:
        """Refuses a payload coded with another checkpoint than the one found here."""
        self.check_rate(rate)
        wanted = extra.get("checkpoint")
        if not wanted:
            raise BitstreamError("hyperprior bitstream does not name the checkpoint that coded it")
        source = self._source_split(spec, extra)
        model, cfg = self.model_for(source, rate)
        if cfg.checkpoint_id != wanted:
            raise BitstreamError(
                f"bitstream was coded with hyperprior checkpoint {quote(wanted, 12)}, but {source} quality "
                f"{rate} here is {cfg.checkpoint_id[:12]}; decode with the checkpoint that coded it"
            )
        from splitfc.common.learned.engine import decode_with

        return decode_with(model, payload, height, width, self.bit_depth)
