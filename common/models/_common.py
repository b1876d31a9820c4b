"""Helpers shared by the model families: checkpoint lookup, image input, torch setup."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.settings import model_settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointNotFoundError(SplitfcError, FileNotFoundError):
    """A checkpoint folder or head file that is not where it was looked for."""


class CorruptCheckpointError(SplitfcError, ValueError):
    """A checkpoint folder whose weights file does not parse (truncated or damaged safetensors)."""


def setup_torch() -> None:
    """Apply the thread setting once (a no-op when unset)."""
    import torch

    threads = model_settings().torch_threads
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def torch_dtype(name: str | None = None) -> Any:
    import torch

    name = name or model_settings().torch_dtype
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise SplitfcError(f"unknown torch dtype {name!r}; valid: float32, bfloat16, float16") from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(source: str) -> bool:
    """True unless ``source`` has the form ``owner/name`` of a hub id."""
    return not _HUB_ID.match(source)


def resolve_checkpoint(hub_id: str, source: str | os.PathLike | None = None) -> tuple[str, bool]:
    """Where to load a ``paper`` checkpoint from: ``(name_or_path, local_files_only)``.

    Order: an explicit ``source`` (a folder or a hub id), then
    ``SPLITFC_MODEL_DIR/<last part of the id>`` when that setting is given, then
    the hub id itself (HF cache; ``SPLITFC_HF_OFFLINE=1`` forbids downloads).
    A folder that does not exist is an error naming the path tried.
    """
    settings = model_settings()
    offline = settings.hf_offline
    if source is not None:
        text = str(source)
        path = Path(text).expanduser()
        if path.is_dir():
            return str(path), True
        if isinstance(source, os.PathLike) or _looks_like_path(text):
            raise CheckpointNotFoundError(f"checkpoint folder not found: {path}")
        return text, offline
    if settings.model_dir is not None:
        path = settings.model_dir.expanduser() / hub_id.rsplit("/", 1)[-1]
        if not path.is_dir():
            raise CheckpointNotFoundError(
                f"checkpoint folder not found: {path} (SPLITFC_MODEL_DIR/{hub_id.rsplit('/', 1)[-1]})"
            )
        return str(path), True
    return hub_id, offline


def load_pretrained(loader: Any, hub_id: str, source: str | os.PathLike | None, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with `resolve_checkpoint`; load failures become one-line errors."""
    from safetensors import SafetensorError

    name, local_only = resolve_checkpoint(hub_id, source)
    try:
        return loader.from_pretrained(name, local_files_only=local_only, **kwargs)
    except SafetensorError as exc:
        raise corrupt_weights_error(loader.__name__, name, exc) from None
    except (OSError, ValueError) as exc:
        where = name if Path(name).is_dir() else f"hub id {name} (HF cache{', offline' if local_only else ''})"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointNotFoundError(f"cannot load {loader.__name__} from {where}: {first}") from None


def corrupt_weights_error(what: str, name: str, exc: BaseException) -> CorruptCheckpointError:
    """One line for a weights file that does not parse: the folder, the parser's reason, what to do.

    A folder converted by the project (`pretrained.COMPLETE_MARK`) is reconverted once deleted;
    any other folder (or an HF cache entry, ``name`` a hub id) needs its weights replaced.
    """
    from splitfc.common.models.pretrained import COMPLETE_MARK

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    folder = Path(name)
    where = str(folder)
    if (folder / COMPLETE_MARK).is_file():
        todo = f"delete {folder} to reconvert it (the next run converts it again)"
    elif folder.is_dir():
        todo = f"replace the weights in {folder} (or delete the folder and fetch the model again)"
    else:
        where = f"hub id {name} (HF cache)"
        todo = f"delete its entry in the Hugging Face cache to download {name} again"
    return CorruptCheckpointError(
        f"cannot load {what} from {where}: its weights file is truncated or damaged ({first}); {todo}"
    )


def check_config(folder: str | os.PathLike, hub_id: str, **expected: Any) -> None:
    """Refuse a checkpoint folder whose ``config.json`` is not the architecture ``hub_id`` names.

    ``expected``: config fields and their values (e.g. ``model_type="dinov2", hidden_size=384``). Without
    this, ``from_pretrained`` on another model's folder initialises the missing weights at random and
    returns plausible garbage. Raises `CheckpointNotFoundError` (one line: folder, what differs).
    """
    import json

    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointNotFoundError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(config, dict):
        raise CheckpointNotFoundError(f"{path} holds no config object")
    wrong = [f"{key} {config.get(key)!r} (needs {value!r})" for key, value in expected.items()
             if config.get(key) != value]
    if wrong:
        raise CheckpointNotFoundError(f"{Path(folder)} is not {hub_id}: config has " + ", ".join(wrong))


def heads_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder of published head files (``SPLITFC_HEADS_DIR`` unless overridden)."""
    folder = override if override is not None else model_settings().heads_dir
    if folder is None:
        raise CheckpointNotFoundError(
            "no heads folder: set SPLITFC_HEADS_DIR to the folder holding the DINOv2 head files"
        )
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CheckpointNotFoundError(f"heads folder not found: {path}")
    return path


def load_head_file(folder: Path, name: str) -> dict[str, Any]:
    """A published head checkpoint as a flat state dict (``torch.load(weights_only=True)``)."""
    import torch

    path = folder / name
    if not path.is_file():
        raise CheckpointNotFoundError(f"head file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SplitfcError(f"cannot read head file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SplitfcError(f"head file {path} holds no state dict")
    return {k.removeprefix("decode_head."): v for k, v in state.items()}


def to_rgb_array(image: Any) -> np.ndarray:
    """An HxWx3 uint8 array from an array (gray, RGB, RGBA), a PIL image or an image path."""
    from PIL import Image

    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise SplitfcError(f"image file not found: {path}")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise SplitfcError(f"expected an HxWx3 image, got an array of shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an HxWx3 uint8 image (PIL)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def resize_center_crop(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Resize the shorter side to ``resize`` then center-crop ``crop`` x ``crop`` (ImageNet eval)."""
    h, w = image.shape[:2]
    scale = resize / min(h, w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    image = resize_rgb(image, nh, nw)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return image[top : top + crop, left : left + crop]


def normalize_to_tensor(images: list[np.ndarray]) -> Any:
    """HxWx3 uint8 images -> (N, 3, H, W) float32 tensor, ImageNet-normalised."""
    import torch

    x = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
