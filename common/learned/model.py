"""The network: CompressAI's scale hyperprior with one input and one output channel.

Paper Section 6.1.2: the original Hyperprior (Ballé et al. 2018) with the
channels of its first analysis and last synthesis convolution set to 1, so it
codes a packed 2-D feature frame. Frames are normalised to [0, 1] (10-bit
level / 1023), padded with edge replication to a multiple of 64 and cropped
back; frames larger than the tile size are coded as independent tiles.

Coding determinism: the rANS decoder picks each ``y`` symbol's CDF by an index
computed from the hyper-synthesis ``h_s``; one index that differs between the
encoder's and the decoder's machine desynchronises the stream and the rest of
the tile decodes to garbage. A float ``h_s`` cannot promise that: one ulp of
difference from another summation order (another BLAS code path, another CPU,
another thread count) flips an index whenever a scale lies that close to a
threshold of the scale table. So everything the entropy decoder depends on is
integer-exact:

* ``h_s`` runs as an integer network (`IntegerHyperSynthesis`, after Ballé,
  Johnston, Minnen, "Integer networks for data compression with latent-variable
  models", ICLR 2019), derived at load time from the stored weights: weights
  ``round(w·2^G)``, biases ``round(b·2^(F+G))``, activations integers with F
  fractional bits, ReLU, and a round-half-up division by ``2^G`` (exact in
  float64) between layers; F = `ACT_FRAC_BITS` = 16, G = `WEIGHT_FRAC_BITS` = 16. The
  convolutions run in float64 on integer-valued operands; every product and
  every partial sum is then an integer of magnitude at most
  ``max|input| · max_o ‖W_o‖₁ + max|B| + 2^(G-1)``, and while that bound is
  below 2^53 (checked on the actual input of every layer, before the layer
  runs) float64 holds all of them exactly, so the result is the same for any
  summation order, BLAS, thread count or CPU. An input that could exceed it is
  refused (`BitstreamError` when decoding, `CodecError` when encoding); nothing
  is ever computed inexactly.
* The scale -> index map compares those integers with integer thresholds
  ``floor(t_k·2^F)`` of the fixed scale table (``s/2^F > t_k`` exactly when
  ``s > floor(t_k·2^F)``), the same map as CompressAI's ``build_indexes``.
* The Gaussian-conditional CDF tables are a shipped file checked by its sha256
  (`splitfc.common.learned.checkpoint`); the entropy bottleneck's CDF tables are
  stored in each checkpoint. The entropy bottleneck decodes with fixed
  per-channel indexes and adds the stored medians (one IEEE addition, the same
  everywhere).

The synthesis ``g_s`` runs in float64 (`FeatureHyperprior.synthesize`); its
output rounded to 10-bit levels is the same on any CPU unless a value lies
within a few float64 rounding errors of a level boundary. The encoder computes
that reconstruction from its own quantized latents (not by entropy-decoding its
payload), and the bitstream carries its digest, which the decoder verifies
(`splitfc.common.integrity`). Compress and decompress run on one thread with
oneDNN and NNPACK off (`deterministic_cpu`). docs/hyperprior.md ("Determinism")
has the measured rate and time costs.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import ScaleHyperprior
from compressai.models.utils import conv, deconv
from torch import nn

from splitfc.common.errors import BitstreamError, CodecError, SplitfcError
from splitfc.common.preprocess import pad_frame, padded_size

PAD_MULTIPLE = 64
"""Spatial size multiple the model needs (6 stride-2 stages)."""

ACT_FRAC_BITS = 16
"""F: fractional bits of the integer hyper-synthesis' activations (input ``z_hat``, hidden layers, scales)."""
WEIGHT_FRAC_BITS = 16
"""G: fractional bits of its weights (biases get F + G)."""
EXACT_LIMIT = 1 << 53
"""Integers below this magnitude are exact in float64, and so is every sum of them that stays below it."""


@dataclass(frozen=True)
class IntegerLayer:
    """One convolution + ReLU of the integer hyper-synthesis (float64 tensors holding integers)."""

    weight: torch.Tensor
    bias: torch.Tensor
    transposed: bool
    stride: int
    padding: int
    output_padding: int
    weight_l1: int
    """max over output channels of the L1 norm of the integer weights (an exact Python int)."""
    bias_max: int
    """max |integer bias|."""

    def bound(self, max_abs_input: int, weight_bits: int) -> int:
        """An upper bound of |any product, partial sum or rounding sum| this layer computes."""
        return max_abs_input * self.weight_l1 + self.bias_max + (1 << (weight_bits - 1))

    def accumulate(self, a: torch.Tensor) -> torch.Tensor:
        """``conv(a, W) + B`` in float64 (exact when `bound` is below 2^53)."""
        if self.transposed:
            acc = F.conv_transpose2d(a, self.weight, None, self.stride, self.padding, self.output_padding)
        else:
            acc = F.conv2d(a, self.weight, None, self.stride, self.padding)
        return acc + self.bias[None, :, None, None]


def _layer_from(module: nn.Module, weight_bits: int, act_bits: int) -> IntegerLayer:
    if not isinstance(module, nn.Conv2d | nn.ConvTranspose2d) or module.bias is None:
        raise ValueError(f"the integer hyper-synthesis takes convolutions with a bias, not {module}")
    transposed = isinstance(module, nn.ConvTranspose2d)
    w = module.weight.detach().to(torch.float64)
    b = module.bias.detach().to(torch.float64)
    # Multiplying by a power of two is exact in float64; torch.round then picks the integer.
    weight = torch.round(w * 2.0**weight_bits)
    bias = torch.round(b * 2.0 ** (weight_bits + act_bits))
    iw = weight.to(torch.int64)
    # Conv2d weights are (out, in, kh, kw), ConvTranspose2d weights (in, out, kh, kw).
    l1 = iw.abs().sum(dim=(0, 2, 3)) if transposed else iw.abs().sum(dim=(1, 2, 3))
    (stride, _), (padding, _) = module.stride, module.padding
    output_padding = module.output_padding[0] if transposed else 0
    return IntegerLayer(weight, bias, transposed, int(stride), int(padding), int(output_padding),
                        int(l1.max()), int(bias.abs().max()))


class IntegerHyperSynthesis:
    """A fixed-point copy of ``h_s`` (convolutions each followed by ReLU) whose output is exact on any CPU.

    Values are float64 tensors holding integers: ``a`` stands for ``a / 2^F``.
    """

    def __init__(self, h_s: nn.Sequential, act_bits: int = ACT_FRAC_BITS,
                 weight_bits: int = WEIGHT_FRAC_BITS) -> None:
        mods = list(h_s)
        if len(mods) % 2 or not all(isinstance(m, nn.ReLU) for m in mods[1::2]):
            raise ValueError("the integer hyper-synthesis takes (convolution, ReLU) pairs")
        self.act_bits = act_bits
        self.weight_bits = weight_bits
        self.layers = tuple(_layer_from(m, weight_bits, act_bits) for m in mods[0::2])

    def to_fixed(self, z_hat: torch.Tensor) -> torch.Tensor:
        """``round(z_hat · 2^F)`` as a float64 integer tensor (the scaling is exact)."""
        return torch.round(z_hat.to(torch.float64) * 2.0**self.act_bits)

    def max_input(self, layer: int) -> int:
        """The largest ``max |input|`` that `layer` computes exactly (its bound stays below 2^53)."""
        lay = self.layers[layer]
        room = EXACT_LIMIT - 1 - lay.bias_max - (1 << (self.weight_bits - 1))
        return room // max(lay.weight_l1, 1)

    def check(self, layer: int, a: torch.Tensor, error: type[SplitfcError] = CodecError) -> None:
        """Raise ``error`` unless `layer` computes exactly on ``a`` (|all sums| < 2^53 proven)."""
        peak = float(a.abs().max()) if a.numel() else 0.0
        if not math.isfinite(peak) or peak > self.max_input(layer):
            limit = self.max_input(layer) / 2.0**self.act_bits
            raise error(
                f"hyperprior: the integer hyper-synthesis cannot compute layer {layer} exactly on this input "
                f"(max |value| {peak / 2.0**self.act_bits:.6g}, exact up to {limit:.6g}); refusing to "
                "compute CDF indexes inexactly"
            )

    def __call__(self, a: torch.Tensor, error: type[SplitfcError] = CodecError) -> torch.Tensor:
        """Integer scales (F fractional bits) from the fixed-point hyper-latent ``a`` (see `to_fixed`)."""
        half = float(1 << (self.weight_bits - 1))
        inv = 2.0**-self.weight_bits
        for i, lay in enumerate(self.layers):
            self.check(i, a, error)
            acc = lay.accumulate(a)
            a = torch.floor((torch.clamp_min(acc, 0.0) + half) * inv)  # ReLU, then round half up
        return a


def scale_thresholds(scale_table: torch.Tensor, act_bits: int = ACT_FRAC_BITS) -> torch.Tensor:
    """``floor(t_k · 2^F)`` for every scale ``t_k`` but the last, exactly (int64)."""
    vals = [math.floor(Fraction(float(t)) * (1 << act_bits)) for t in scale_table[:-1].tolist()]
    return torch.tensor(vals, dtype=torch.int64)


def scale_indexes(scales: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """CDF indexes of integer scales: how many thresholds lie below each scale (CompressAI's ``build_indexes``).

    CompressAI's index of a scale ``s`` is ``#{k < 63 : t_k < max(s, 0.11)}``; with ``s = a / 2^F`` and
    ``a`` an integer, ``s > t_k`` exactly when ``a > floor(t_k · 2^F)``. The lower bound 0.11 is ``t_0``
    itself, so it changes no index.
    """
    return torch.bucketize(scales.to(torch.int64), thresholds, right=False).to(torch.int32)


@dataclass(frozen=True)
class CodingNets:
    """What coding needs beyond the float model, derived once from its weights (not a submodule)."""

    h_s: IntegerHyperSynthesis
    g_s: nn.Module
    """float64 copy of the synthesis."""
    thresholds: torch.Tensor


class FeatureHyperprior(ScaleHyperprior):
    """`ScaleHyperprior` with a 1-channel input and output (paper Section 6.1.2)."""

    def __init__(self, N: int = 32, M: int = 32) -> None:
        super().__init__(N, M)
        self.g_a[0] = conv(1, N)
        self.g_s[-1] = deconv(N, 1)
        self._coding: CodingNets | None = None

    def prepare_coding(self) -> CodingNets:
        """Derive the integer ``h_s``, the float64 ``g_s`` and the index thresholds from the current weights.

        `load_checkpoint` calls this once; coding calls it lazily for a model built otherwise. Call it again
        after changing the weights.
        """
        if self.gaussian_conditional.scale_table.numel() < 2:
            raise ValueError("the Gaussian-conditional tables are not loaded")
        g_s = copy.deepcopy(self.g_s).to(torch.float64).eval()
        for p in g_s.parameters():
            p.requires_grad_(False)
        self._coding = CodingNets(IntegerHyperSynthesis(self.h_s), g_s,
                                  scale_thresholds(self.gaussian_conditional.scale_table))
        return self._coding

    @property
    def coding(self) -> CodingNets:
        return self._coding if self._coding is not None else self.prepare_coding()

    def hyper_indexes(self, z_hat: torch.Tensor, error: type[SplitfcError] = CodecError) -> torch.Tensor:
        """CDF indexes for ``y`` from the decoded hyper-latent, integer-exact (identical on every CPU)."""
        nets = self.coding
        return scale_indexes(nets.h_s(nets.h_s.to_fixed(z_hat), error), nets.thresholds)

    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """``g_s`` in float64: the reconstruction (before clamping and rounding to levels)."""
        return self.coding.g_s(y_hat.to(torch.float64))

    def compress_padded(self, x: torch.Tensor) -> tuple[bytes, bytes, torch.Tensor]:
        """Code one padded 1x1xHxW frame: (y string, z string, the decoder's reconstruction).

        The reconstruction comes from the encoder's own quantized latents (the values the strings code),
        not from entropy-decoding the strings: a coding bug on either side shows as a digest mismatch.
        """
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z_strings = eb.compress(z)
        medians = eb._get_medians().detach().reshape(1, -1, 1, 1)
        z_hat = eb.quantize(z, "dequantize", medians)  # = symbols + medians, as the decoder computes it
        indexes = self.hyper_indexes(z_hat, CodecError)
        y_strings = gc.compress(y, indexes)
        y_hat = gc.quantize(y, "dequantize")  # = the decoded symbols
        return y_strings[0], z_strings[0], self.synthesize(y_hat)

    def decompress_padded(self, y_string: bytes, z_string: bytes, z_shape: tuple[int, int]) -> torch.Tensor:
        """Decode one padded frame from its strings; the caller guarantees ``z_shape``."""
        z_hat = self.entropy_bottleneck.decompress([z_string], z_shape)
        indexes = self.hyper_indexes(z_hat, BitstreamError)
        y_hat = self.gaussian_conditional.decompress([y_string], indexes, torch.float32)
        return self.synthesize(y_hat)


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """Run torch on one thread with oneDNN and NNPACK off (the reference im2col + BLAS kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration")
            with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False), \
                    torch.no_grad():
                yield
    finally:
        torch.set_num_threads(threads)


def frame_tensor(frame: np.ndarray, levels: int | None = None) -> torch.Tensor:
    """A HxW frame as the network's 1x1xH'xW' float32 input: padded at the bottom/right to a multiple of
    `PAD_MULTIPLE` by edge replication (`splitfc.common.preprocess.pad_frame`), divided by ``levels``
    (integer frames: ``2**bit_depth - 1``; None for frames already in [0, 1])."""
    x = pad_frame(np.asarray(frame), PAD_MULTIPLE).astype(np.float32)
    if levels is not None:
        x /= levels
    return torch.from_numpy(x)[None, None]


def tiles(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Row-major tiles (top, left, height, width) of at most ``tile`` x ``tile`` covering a frame."""
    return [
        (top, left, min(tile, height - top), min(tile, width - left))
        for top in range(0, height, tile)
        for left in range(0, width, tile)
    ]


def z_shape_for(height: int, width: int) -> tuple[int, int]:
    """Hyper-latent size of a tile of ``height`` x ``width`` once padded."""
    return padded_size(height, PAD_MULTIPLE) // PAD_MULTIPLE, padded_size(width, PAD_MULTIPLE) // PAD_MULTIPLE


def y_symbols_for(height: int, width: int, M: int) -> int:
    """Number of ``y`` symbols of a tile (M channels at 1/16 of the padded size)."""
    return M * (padded_size(height, PAD_MULTIPLE) // 16) * (padded_size(width, PAD_MULTIPLE) // 16)


def z_symbols_for(height: int, width: int, N: int) -> int:
    """Number of ``z`` symbols of a tile (N channels at 1/64 of the padded size)."""
    zh, zw = z_shape_for(height, width)
    return N * zh * zw
