"""The network: CompressAI's scale hyperprior with one input and one output channel.

Paper Section 6.1.2: the original Hyperprior (Ballé et al. 2018) with the
channels of its first analysis and last synthesis convolution set to 1, so it
codes a packed 2-D feature frame. Frames are normalised to [0, 1] (10-bit
level / 1023), padded with edge replication to a multiple of 64 and cropped
back; frames larger than the tile size are coded as independent tiles.

Coding determinism: the decoder rebuilds the Gaussian-conditional CDF indexes
from the hyper-synthesis ``h_s``; if its float output differed by one ulp
between the encoder's and the decoder's process the rANS stream would decode
to garbage. Compress and decompress therefore run the networks on one thread
with oneDNN off (the reference CPU kernels), and the CDF tables are stored in
the checkpoint instead of being rebuilt from floats at load time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from compressai.models import ScaleHyperprior
from compressai.models.utils import conv, deconv

PAD_MULTIPLE = 64
"""Spatial size multiple the model needs (6 stride-2 stages)."""


class FeatureHyperprior(ScaleHyperprior):
    """`ScaleHyperprior` with a 1-channel input and output (paper Section 6.1.2)."""

    def __init__(self, N: int = 32, M: int = 32) -> None:
        super().__init__(N, M)
        self.g_a[0] = conv(1, N)
        self.g_s[-1] = deconv(N, 1)

    def hyper_scales(self, z_hat: torch.Tensor) -> torch.Tensor:
        """CDF indexes for ``y`` from the decoded hyper-latent (identical on both sides)."""
        return self.gaussian_conditional.build_indexes(self.h_s(z_hat))

    def compress_padded(self, x: torch.Tensor) -> tuple[bytes, bytes, tuple[int, int]]:
        """Code one padded 1x1xHxW frame: (y string, z string, z spatial shape)."""
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        indexes = self.hyper_scales(z_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes)
        return y_strings[0], z_strings[0], (int(z.size(-2)), int(z.size(-1)))

    def decompress_padded(self, y_string: bytes, z_string: bytes, z_shape: tuple[int, int]) -> torch.Tensor:
        """Decode one padded frame from its strings; the caller guarantees ``z_shape``."""
        z_hat = self.entropy_bottleneck.decompress([z_string], z_shape)
        indexes = self.hyper_scales(z_hat)
        y_hat = self.gaussian_conditional.decompress([y_string], indexes, z_hat.dtype)
        return self.g_s(y_hat)


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """Run torch on one thread with oneDNN off, so results do not depend on the caller's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration")
            with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
                yield
    finally:
        torch.set_num_threads(threads)


def padded_size(n: int, multiple: int = PAD_MULTIPLE) -> int:
    """``n`` rounded up to ``multiple``."""
    return int(math.ceil(n / multiple) * multiple)


def pad_replicate(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad a NxCxHxW tensor at the bottom/right to a multiple, replicating the edge."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def tiles(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Row-major tiles (top, left, height, width) of at most ``tile`` x ``tile`` covering a frame."""
    return [
        (top, left, min(tile, height - top), min(tile, width - left))
        for top in range(0, height, tile)
        for left in range(0, width, tile)
    ]


def z_shape_for(height: int, width: int) -> tuple[int, int]:
    """Hyper-latent size of a tile of ``height`` x ``width`` once padded."""
    return padded_size(height) // PAD_MULTIPLE, padded_size(width) // PAD_MULTIPLE


def y_symbols_for(height: int, width: int, M: int) -> int:
    """Number of ``y`` symbols of a tile (M channels at 1/16 of the padded size)."""
    return M * (padded_size(height) // 16) * (padded_size(width) // 16)


def z_symbols_for(height: int, width: int, N: int) -> int:
    """Number of ``z`` symbols of a tile (N channels at 1/64 of the padded size)."""
    zh, zw = z_shape_for(height, width)
    return N * zh * zw
