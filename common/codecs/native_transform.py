"""Fitted channel transforms (KLT / channel PCA) of the ``native`` codec, and their artefacts.

A transform is fitted per split by ``splitfc fit-codec --codec native`` from the features of at most 100
training samples (task-agnostic: statistics of the features only). Every position of the split's tensor
other than its channel axis (`splitfc.common.codecs.native.channel_axis`: views, layers, tokens, or
height x width) is one observation of the C-dimensional channel vector. The fit is the observations'
per-channel mean and the eigendecomposition of their C x C covariance (`numpy.linalg.eigh`): the rows
of ``basis`` are the principal directions in order of decreasing variance, each with the sign that makes
its largest-magnitude entry positive (so a refit gives the same artefact whatever LAPACK returns).

Artefact: one safetensors file ``<split>.c<C>.<id>.safetensors`` holding ``mean`` (C float64),
``basis`` (C x C float32: half the size of float64; the codec uses ``float64(basis)`` exactly, which is
orthonormal to about 1e-7) and ``variances`` (C float64), and one metadata entry ``splitfc`` (a JSON object
with sorted keys: format, split id, channels, the samples it was fitted on). Sizes: 4 C^2 + 16 C bytes plus
a header of about 0.5 KB: 16 channels 1.6 KB, 128 channels 67 KB, 384 channels 596 KB, 576 channels 1.3 MB,
1536 channels (paper) 9.5 MB.

The transform id is the first 8 bytes of the file's SHA-256 (16 hex digits in the file name): it travels in
the bitstream, and edge and cloud load the artefact by it (`get_native_transform`). Loading hashes the file
and refuses one whose digest is not the id in its name (a corrupt or edited file), with one line naming it.

Where artefacts are looked for, in order: ``SPLITFC_NATIVE_TRANSFORM`` when it names a file, the folder
``SPLITFC_NATIVE_TRANSFORM_DIR`` (user-fitted), then the shipped ``checkpoints/native`` folder.
``SPLITFC_NATIVE_TRANSFORM`` set to an id or a path forces that transform onto every split of the same
channel count (paper Table 6: fitted on one split, applied to others); ``none`` means no fitted transform.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from splitfc.common.errors import ArtefactUnavailableError, SplitfcError
from splitfc.common.specs import SplitSpec
from splitfc.common.untrusted import quote

FORMAT = "splitfc-native-transform"
FORMAT_VERSION = 1
ID_BYTES = 8
"""Length of a transform id: the first 8 bytes of the artefact file's SHA-256."""
SUFFIX = ".safetensors"
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints" / "native"
"""The fitted transforms shipped with splitfc (tiny and small presets)."""
MAX_TRAINING_SAMPLES = 100
"""At most this many training samples are fitted on (issue 15)."""
ORTHONORMAL_TOLERANCE = 1e-4
"""Largest |B B^T - I| entry accepted when loading an artefact (float32 storage gives about 1e-7)."""
_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_-]+)\.c(?P<channels>[0-9]+)\.(?P<id>[0-9a-f]{16})\.safetensors$")
HEX_ID = re.compile(r"^[0-9a-fA-F]{16}$")
"""A transform id as written in settings and on the command line (16 hex digits)."""
NONE = "none"
"""``SPLITFC_NATIVE_TRANSFORM=none``: no fitted transform for any split."""


class UnknownTransformError(ArtefactUnavailableError):
    """A bitstream naming a native transform id whose artefact is not here (or a forced one that is absent)."""

    reason: ClassVar[str] = "unknown_transform"


class TransformFileError(SplitfcError):
    """An artefact file that is corrupt, edited (digest differs from its id) or not a native transform."""

    reason: ClassVar[str] = "transform_file"


@dataclass(frozen=True)
class NativeTransform:
    """A fitted channel transform: ``y = basis @ (x - mean)`` per channel vector ``x``; ``x = basis.T @ y + mean``."""

    transform_id: bytes
    """8 bytes: the first 8 bytes of the SHA-256 of the artefact file."""
    split_id: str
    """The split whose training features it was fitted on."""
    channels: int
    """C: the length of the channel axis."""
    mean: np.ndarray = field(repr=False, compare=False)
    """(C,) float64: the channel means of the training features."""
    basis: np.ndarray = field(repr=False, compare=False)
    """(C, C) float64 (float32 values), orthonormal rows: row k is the k-th principal direction (descending
    variance)."""
    variances: np.ndarray = field(repr=False, compare=False)
    """(C,) float64: training variance of each component (the covariance's eigenvalues, >= 0, descending)."""
    path: Path | None = field(default=None, compare=False)
    """The artefact file it was loaded from (None: not loaded from a file)."""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The artefact's ``splitfc`` metadata: format, preset, samples, observations, source."""

    @property
    def hex_id(self) -> str:
        """The id as 16 lowercase hex digits (as in the artefact's file name)."""
        return self.transform_id.hex()


# --------------------------------------------------------------------------------------------- fitting


def feature_observations(features: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """The channel vectors of one feature tensor: (N, C) float64, N = every position off the channel axis.

    ``features``: a tensor of ``spec``'s layout (e.g. Dpt views x layers x tokens x channels); its channel
    axis is the native codec's (`splitfc.common.codecs.native.channel_axis`).
    """
    from splitfc.common.codecs.native import channel_axis

    x = np.asarray(features)
    axis = channel_axis(spec, x.ndim)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)


class ChannelMoments:
    """Running first and second moments of channel vectors (float64), added one batch at a time.

    Sums are kept about a shift (the first batch's mean) so that channels with large offsets (massive
    activations) lose no precision in the covariance.
    """

    def __init__(self, channels: int) -> None:
        if channels < 1:
            raise SplitfcError(f"a channel transform needs at least one channel, got {channels}")
        self.channels = channels
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(channels)
        self._scatter = np.zeros((channels, channels))

    def add(self, observations: np.ndarray) -> None:
        """Add (N, C) observations; raises `SplitfcError` on a wrong channel count or non-finite values."""
        x = np.asarray(observations, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise SplitfcError(f"observations of shape {x.shape}, expected (N, {self.channels})")
        if not np.isfinite(x).all():
            raise SplitfcError("features to fit a channel transform on hold NaN or infinite values")
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
        d = x - self._shift
        self._sum += d.sum(axis=0)
        self._scatter += d.T @ d
        self.count += x.shape[0]

    def mean_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) mean and (C, C) covariance (divided by N) of everything added; needs two observations."""
        if self.count < 2 or self._shift is None:
            raise SplitfcError(f"a channel transform needs at least 2 observations, got {self.count}")
        centre = self._sum / self.count
        cov = self._scatter / self.count - np.outer(centre, centre)
        return self._shift + centre, (cov + cov.T) / 2


def principal_axes(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a (C, C) covariance: (basis (C, C) rows = directions, variances (C,)), descending.

    Each row's sign makes its largest-magnitude entry positive; variances below zero (round-off) are 0.
    """
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values, kind="stable")[::-1]
    basis = vectors[:, order].T.copy()
    variances = np.clip(values[order], 0.0, None)
    largest = np.argmax(np.abs(basis), axis=1)
    signs = np.sign(basis[np.arange(basis.shape[0]), largest])
    basis *= np.where(signs == 0, 1.0, signs)[:, None]
    return basis, variances


def fit_channel_transform(observations: np.ndarray | ChannelMoments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit mean + channel PCA: (N, C) observations (or accumulated `ChannelMoments`) -> (mean, basis, variances).

    ``mean`` (C,) float64; ``basis`` (C, C) float64 orthonormal rows, descending variance; ``variances`` (C,).
    """
    if isinstance(observations, ChannelMoments):
        moments = observations
    else:
        x = np.asarray(observations)
        if x.ndim != 2:
            raise SplitfcError(f"observations must be (N, C), got shape {x.shape}")
        moments = ChannelMoments(x.shape[1])
        moments.add(x)
    mean, cov = moments.mean_covariance()
    basis, variances = principal_axes(cov)
    return mean, basis, variances


def energy_compaction(variances: np.ndarray, ks: tuple[int, ...] = (1, 4, 16, 64)) -> dict[int, float]:
    """Fraction of the total variance in the first K components, for each K of ``ks`` (at most C)."""
    v = np.asarray(variances, dtype=np.float64)
    total = float(v.sum())
    cum = np.cumsum(v)
    return {k: (float(cum[min(k, v.size) - 1]) / total if total > 0 else 1.0) for k in ks if k >= 1}


def coding_gain(variances: np.ndarray, floor: float = 1e-12) -> float:
    """Transform coding gain: arithmetic over geometric mean of the component variances (1 = no gain).

    Variances below ``floor`` times the largest are raised to it (a zero variance would make it infinite).
    """
    v = np.asarray(variances, dtype=np.float64)
    if v.size == 0 or not v.max() > 0:
        return 1.0
    v = np.maximum(v, floor * float(v.max()))
    from scipy.stats import gmean

    return float(v.mean() / gmean(v))


# ------------------------------------------------------------------------------------------- artefacts


def artefact_name(split_id: str, channels: int, transform_id: bytes) -> str:
    """``<split>.c<C>.<16 hex digits>.safetensors``."""
    return f"{split_id}.c{channels}.{transform_id.hex()}{SUFFIX}"


def save_native_transform(
    directory: Path | str,
    split_id: str,
    mean: np.ndarray,
    basis: np.ndarray,
    variances: np.ndarray,
    metadata: dict[str, Any] | None = None,
    output: Path | str | None = None,
) -> NativeTransform:
    """Write an artefact into ``directory`` as ``<split>.c<C>.<id>.safetensors`` (or exactly at ``output``).

    The same fit gives the same bytes, hence the same id. ``basis`` is stored as float32. Returns the
    transform as loaded back from the written file. Raises `SplitfcError` on inconsistent shapes.
    """
    from safetensors.numpy import save

    mean = np.asarray(mean, dtype=np.float64)
    basis = np.asarray(basis, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    channels = mean.shape[0] if mean.ndim == 1 else -1
    if channels < 1 or basis.shape != (channels, channels) or variances.shape != (channels,):
        raise SplitfcError(f"transform shapes do not fit: mean {mean.shape}, basis {basis.shape}, "
                           f"variances {variances.shape}")
    meta = {**(metadata or {}), "format": FORMAT, "format_version": FORMAT_VERSION, "split_id": split_id,
            "channels": channels}
    data = save(
        {"mean": mean, "basis": basis.astype(np.float32), "variances": variances},
        metadata={"splitfc": json.dumps(meta, sort_keys=True)},
    )
    transform_id = hashlib.sha256(data).digest()[:ID_BYTES]
    _checked(transform_id, {"mean": mean, "basis": basis.astype(np.float32), "variances": variances},
             json.loads(json.dumps(meta)), Path(output or directory))  # refuse before writing anything
    if output is not None:
        path = Path(output)
        if path.suffix != SUFFIX:
            raise SplitfcError(f"a native transform artefact must end in {SUFFIX}, got {path}")
    else:
        path = Path(directory) / artefact_name(split_id, channels, transform_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return load_native_transform(path)


def _header(data: bytes, path: Path) -> dict[str, Any]:
    """The safetensors JSON header (8-byte little-endian length, then JSON) of ``data``."""
    if len(data) < 8:
        raise TransformFileError(f"native transform {path} is not a safetensors file ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise TransformFileError(f"native transform {path} is truncated (header of {size} bytes)")
    try:
        header = json.loads(data[8:8 + size])
        meta = json.loads(header["__metadata__"]["splitfc"])
    except (ValueError, KeyError, TypeError):
        raise TransformFileError(f"native transform {path} has no splitfc metadata (not written by "
                                 "splitfc fit-codec)") from None
    if not isinstance(meta, dict):
        raise TransformFileError(f"native transform {path} has malformed splitfc metadata")
    return meta


_CACHE: dict[bytes, NativeTransform] = {}
"""Checked transforms by id (content-addressed, so never stale)."""
_FOUND: dict[tuple[Any, ...], NativeTransform | str | None] = {}
"""`find_native_transform` / `forced_transform` answers by their arguments and the settings: the folders are
searched once per process (a transform fitted while a process runs is seen by the next one)."""
_LOCK = threading.Lock()


def load_native_transform(path: Path | str) -> NativeTransform:
    """Load and check one artefact file (cached by id once checked).

    Raises `TransformFileError` (one line naming the file) when it cannot be read, when its SHA-256 does
    not start with the id in its name, or when its contents are not a valid transform (shapes, dtypes,
    non-finite values, basis not orthonormal, variances not descending and >= 0).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TransformFileError(f"cannot read native transform {path}: {exc.strerror or exc}") from None
    transform_id = hashlib.sha256(data).digest()[:ID_BYTES]
    named = _NAME.match(path.name)
    if named is not None and named["id"] != transform_id.hex():
        raise TransformFileError(f"native transform {path} is corrupt or was edited: its SHA-256 starts "
                                 f"{transform_id.hex()}, its name says {named['id']}")
    with _LOCK:
        cached = _CACHE.get(transform_id)
    if cached is not None:
        return cached
    meta = _header(data, path)
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise TransformFileError(f"native transform {path} is corrupt: {_one_line(exc)}") from None
    transform = _checked(transform_id, tensors, meta, path)
    if named is not None and (named["split"] != transform.split_id or int(named["channels"]) != transform.channels):
        raise TransformFileError(f"native transform {path}: its name does not match its contents "
                                 f"({transform.split_id}, {transform.channels} channels)")
    with _LOCK:
        return _CACHE.setdefault(transform_id, transform)


def _checked(transform_id: bytes, tensors: dict[str, np.ndarray], meta: dict[str, Any], path: Path) -> NativeTransform:
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise TransformFileError(f"native transform {path} is of format {quote(str(meta.get('format')))} "
                                 f"v{quote(str(meta.get('format_version')))}, this reader knows {FORMAT} "
                                 f"v{FORMAT_VERSION}")
    channels, split_id = meta.get("channels"), meta.get("split_id")
    if not isinstance(channels, int) or channels < 1 or not isinstance(split_id, str):
        raise TransformFileError(f"native transform {path} has no valid split id / channel count")
    expected = {"mean": ((channels,), np.float64), "basis": ((channels, channels), np.float32),
                "variances": ((channels,), np.float64)}
    for name, (shape, dtype) in expected.items():
        got = tensors.get(name)
        if got is None or got.shape != shape or got.dtype != dtype:
            raise TransformFileError(f"native transform {path}: tensor {name!r} should be {np.dtype(dtype)} of "
                                     f"shape {shape}, found "
                                     f"{'none' if got is None else f'{got.dtype} {got.shape}'}")
        if not np.isfinite(got).all():
            raise TransformFileError(f"native transform {path}: tensor {name!r} holds NaN or infinite values")
    mean = np.array(tensors["mean"], dtype=np.float64)
    basis = np.array(tensors["basis"], dtype=np.float64)
    variances = np.array(tensors["variances"], dtype=np.float64)
    off = float(np.abs(basis @ basis.T - np.eye(channels)).max())
    if off > ORTHONORMAL_TOLERANCE:
        raise TransformFileError(f"native transform {path}: basis is not orthonormal (|B B^T - I| up to {off:.3g})")
    if (variances < 0).any() or (np.diff(variances) > 0).any():
        raise TransformFileError(f"native transform {path}: variances are not >= 0 and descending")
    for array in (mean, basis, variances):
        array.setflags(write=False)
    return NativeTransform(transform_id, split_id, channels, mean, basis, variances, path, meta)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -------------------------------------------------------------------------------------------- lookup


def _settings():
    from splitfc.common.settings import native_transform_settings

    return native_transform_settings()


def transform_dirs() -> list[Path]:
    """The folders searched for artefacts, in order: ``SPLITFC_NATIVE_TRANSFORM_DIR`` (if set), shipped."""
    user = _settings().native_transform_dir
    return [*([Path(user)] if user is not None else []), SHIPPED_DIR]


def _artefacts(pattern: str) -> list[Path]:
    """Artefact files matching ``pattern`` in the search folders, in search order (sorted within one)."""
    found = []
    for directory in transform_dirs():
        if directory.is_dir():
            found += sorted(p for p in directory.glob(pattern) if _NAME.match(p.name))
    return found


def forced_transform() -> NativeTransform | str:
    """What ``SPLITFC_NATIVE_TRANSFORM`` forces: a transform, ``"none"`` (no fitted transform), or ``""``
    (nothing forced). Raises `UnknownTransformError` for an id that is not here, `TransformFileError` for a
    path that cannot be loaded."""
    value = (_settings().native_transform or "").strip()
    key = ("forced", value, *transform_dirs())
    with _LOCK:
        if key in _FOUND:
            return _FOUND[key]
    answer = _forced(value)
    with _LOCK:
        _FOUND[key] = answer
    return answer


def _forced(value: str) -> NativeTransform | str:
    if not value:
        return ""
    if value.lower() == NONE:
        return NONE
    if HEX_ID.match(value):
        return get_native_transform(bytes.fromhex(value), honour_override=False)
    path = Path(value).expanduser()
    if not path.is_file():
        raise UnknownTransformError(f"SPLITFC_NATIVE_TRANSFORM={quote(value)} is neither 'none', a 16-hex-digit "
                                    "transform id nor an artefact file")
    return load_native_transform(path)


def find_native_transform(split_id: str, channels: int, *, honour_override: bool = True) -> NativeTransform | None:
    """The transform the ``native`` codec uses for ``split_id`` with ``channels`` channels, or None (no fit).

    With ``SPLITFC_NATIVE_TRANSFORM`` set (and ``honour_override``): ``none`` gives None; an id or a path
    gives that transform for any split, as long as its channel count is ``channels`` (else
    `SplitfcError`: a forced transform never silently falls back). Otherwise the first artefact named
    ``<split_id>.c<channels>.*.safetensors`` in ``SPLITFC_NATIVE_TRANSFORM_DIR``, then in the shipped
    folder. Raises `TransformFileError` when that file is corrupt.
    """
    if honour_override:
        forced = forced_transform()
        if forced == NONE:
            return None
        if isinstance(forced, NativeTransform):
            if forced.channels != channels:
                raise SplitfcError(f"SPLITFC_NATIVE_TRANSFORM forces transform {forced.hex_id} "
                                   f"({forced.split_id}, {forced.channels} channels) but split {split_id} has "
                                   f"{channels} channels")
            return forced
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split_id) or channels < 1:
        return None
    key = ("find", split_id, int(channels), *transform_dirs())
    with _LOCK:
        if key in _FOUND:
            return _FOUND[key]  # type: ignore[return-value]
    paths = _artefacts(f"{split_id}.c{int(channels)}.*{SUFFIX}")
    found = load_native_transform(paths[0]) if paths else None
    with _LOCK:
        _FOUND[key] = found
    return found


def get_native_transform(transform_id: bytes, *, honour_override: bool = True) -> NativeTransform:
    """The transform of ``transform_id`` (8 bytes from a bitstream), loaded once and cached.

    Looked for in the file ``SPLITFC_NATIVE_TRANSFORM`` names (if it is a path), then as
    ``*.<hex id>.safetensors`` in ``SPLITFC_NATIVE_TRANSFORM_DIR`` and the shipped folder. Raises
    `UnknownTransformError` (FAILED_PRECONDITION on the cloud) naming the id and how to get the artefact when it is not
    here, `TransformFileError` when every file of that id is corrupt (a damaged copy is skipped for a good one).
    """
    transform_id = bytes(transform_id)
    if len(transform_id) != ID_BYTES:
        raise UnknownTransformError(f"native transform id of {len(transform_id)} bytes, expected {ID_BYTES}")
    with _LOCK:
        cached = _CACHE.get(transform_id)
    if cached is not None:
        return cached
    if honour_override:
        value = (_settings().native_transform or "").strip()
        if value and value.lower() != NONE and not HEX_ID.match(value) and Path(value).expanduser().is_file():
            forced = load_native_transform(Path(value).expanduser())
            if forced.transform_id == transform_id:
                return forced
    hex_id = transform_id.hex()
    first_error: TransformFileError | None = None
    for path in _artefacts(f"*.{hex_id}{SUFFIX}"):
        try:
            return load_native_transform(path)
        except TransformFileError as exc:  # a damaged copy: another folder may hold a good one
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    where = ", ".join(str(d) for d in transform_dirs())
    raise UnknownTransformError(
        f"native transform {hex_id} is not here (looked in {where}): copy its artefact "
        f"<split>.c<channels>.{hex_id}.safetensors from the encoder's side into SPLITFC_NATIVE_TRANSFORM_DIR, "
        "or fit one with splitfc fit-codec --codec native --split SPLIT"
    )


def clear_cache() -> None:
    """Forget loaded transforms and lookups (tests; a transform fitted since is found afterwards)."""
    with _LOCK:
        _CACHE.clear()
        _FOUND.clear()


__all__ = [
    "ID_BYTES",
    "SHIPPED_DIR",
    "ChannelMoments",
    "NativeTransform",
    "TransformFileError",
    "UnknownTransformError",
    "clear_cache",
    "coding_gain",
    "energy_compaction",
    "feature_observations",
    "find_native_transform",
    "fit_channel_transform",
    "forced_transform",
    "get_native_transform",
    "load_native_transform",
    "principal_axes",
    "save_native_transform",
    "transform_dirs",
]
