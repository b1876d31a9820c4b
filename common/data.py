"""Task data: loaders for the paper's sources (local paths) and a built-in offline sample set.

Loaders (each returns ``list[Sample]`` in a fixed, sorted order):

* `imagenet_val`  ImageNet validation images: ``ROOT/<wnid>/*.JPEG`` class folders
  (label = index of the wnid in sorted order) or a flat folder plus a labels file
  (``<file name> <label>`` per line).
* `voc2012`       PASCAL VOC 2012 segmentation: ``VOC2012/ImageSets/Segmentation/<split>.txt``,
  ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG, 255 = ignore).
* `nyu_depth_v2`  NYU-Depth-v2 test pairs (BTS layout): a split file of lines
  ``<rgb path> <depth path> [focal]`` relative to ROOT, or else every ``rgb_*.jpg`` with its
  ``sync_depth_*.png`` (16-bit PNG in millimetres) found under ROOT.
* `arc_challenge` ARC-Challenge: AI2 ``.jsonl`` (``question.stem``, ``question.choices``,
  ``answerKey``) or Hugging Face ``.parquet``/``.jsonl`` (``question``, ``choices.text``,
  ``choices.label``, ``answerKey``).
* `coco_captions` COCO 2017 captions (``captions_val2017.json``): the first caption of each
  image, with the image path as target when an images folder is given or ``val2017/`` lies
  beside ``annotations/`` (for FID).

`load_samples` picks the loader for a split; ``train=True`` keeps the samples whose id
hashes into the training fifth (``crc32(id) % 5 == 0``), ``train=False`` the others, so
the two never overlap.

`builtin_samples` is the offline set of the ``tiny`` preset (`splitfc.common.builtin_data`).
Which loader and which offline pool a split uses is its task's choice (`splitfc.common.tasks`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import MultipleChoice, Prompt, Sample
from splitfc.common.specs import get_split

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


class DataError(SplitfcError, ValueError):
    """A data path that is missing or not in the expected format."""


# --------------------------------------------------------------------------------------------
# helpers


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    return path


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8."""
    from PIL import Image

    try:
        with Image.open(_require(path, "image")) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def read_index_png(path: Path) -> np.ndarray:
    """A palette/gray PNG of class indices as HxW int64 (no palette conversion)."""
    from PIL import Image

    with Image.open(_require(path, "mask")) as im:
        if im.mode not in ("P", "L"):
            raise DataError(f"segmentation mask {path} must be a palette or gray PNG, got mode {im.mode}")
        return np.asarray(im).astype(np.int64)


def read_depth_png(path: Path, scale: float = 1000.0) -> np.ndarray:
    """A 16-bit depth PNG (millimetres) as HxW float32 metres."""
    from PIL import Image

    with Image.open(_require(path, "depth map")) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise DataError(f"depth map {path} must be single-channel, got shape {arr.shape}")
    return arr.astype(np.float32) / scale


Keep = Callable[[str], bool] | None
"""An optional predicate on sample ids: loaders read only the files of the ids it keeps."""


def _select(items: Iterable[tuple[str, Any]], n: int | None, keep: Keep) -> list[tuple[str, Any]]:
    """The first ``n`` ``(id, item)`` pairs whose id ``keep`` accepts (all when ``n`` is None)."""
    out = []
    for sample_id, item in items:
        if n is not None and len(out) >= n:
            break
        if keep is None or keep(sample_id):
            out.append((sample_id, item))
    return out


def is_train_id(sample_id: str) -> bool:
    """The fixed train/eval partition of real data sets: one id in five is for training."""
    return zlib.crc32(sample_id.encode()) % 5 == 0


# --------------------------------------------------------------------------------------------
# loaders of the paper's sources


def imagenet_val(
    root: Path | str, n: int | None = None, labels: Path | str | None = None, keep: Keep = None
) -> list[Sample]:
    """ImageNet validation images with class ids (see module doc for the layouts)."""
    root = _require(Path(root), "ImageNet folder")
    if labels is not None:
        table: dict[str, int] = {}
        for line in _require(Path(labels), "labels file").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                table[Path(parts[0]).name] = int(parts[1])
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name in table)
        chosen = _select(((p.stem, p) for p in files), n, keep)
        return [Sample(i, read_image(p), table[p.name]) for i, p in chosen]
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders in {root} (expected ROOT/<wnid>/*.JPEG or a labels file)")
    files = [
        (p, label)
        for label, wnid in enumerate(classes)
        for p in sorted((root / wnid).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    files.sort(key=lambda pl: pl[0].name)
    chosen = _select(((p.stem, (p, label)) for p, label in files), n, keep)
    return [Sample(i, read_image(p), label) for i, (p, label) in chosen]


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DataError(f"no VOC2012 layout under {root} (expected ImageSets/Segmentation/<split>.txt)")


def voc2012(root: Path | str, split: str = "val", n: int | None = None, keep: Keep = None) -> list[Sample]:
    """VOC 2012 segmentation images and class-index masks."""
    base = _voc_root(_require(Path(root), "VOC2012 folder"))
    ids_file = _require(base / "ImageSets" / "Segmentation" / f"{split}.txt", "VOC split file")
    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    return [
        Sample(i, read_image(base / "JPEGImages" / f"{i}.jpg"),
               read_index_png(base / "SegmentationClass" / f"{i}.png"))
        for i, _ in _select(((i, i) for i in ids), n, keep)
    ]


def nyu_depth_v2(
    root: Path | str, split_file: Path | str | None = None, n: int | None = None, keep: Keep = None
) -> list[Sample]:
    """NYU-Depth-v2 RGB images with depth in metres (BTS test layout)."""
    root = _require(Path(root), "NYU-Depth-v2 folder")
    pairs: list[tuple[Path, Path]] = []
    if split_file is not None:
        for line in _require(Path(split_file), "NYU split file").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] != "None":
                pairs.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
    else:
        for rgb in sorted(root.rglob("rgb_*.jpg")):
            depth = rgb.with_name("sync_depth_" + rgb.stem.removeprefix("rgb_") + ".png")
            if depth.exists():
                pairs.append((rgb, depth))
    if not pairs:
        raise DataError(f"no NYU-Depth-v2 pairs under {root} (rgb_*.jpg with sync_depth_*.png, or a split file)")
    def pair_id(rgb: Path) -> str:
        rel = rgb.relative_to(root) if rgb.is_relative_to(root) else Path(rgb.name)
        return str(rel.with_suffix("")).replace("/", "_")

    chosen = _select(((pair_id(rgb), (rgb, depth)) for rgb, depth in pairs), n, keep)
    return [Sample(i, read_image(rgb), read_depth_png(depth)) for i, (rgb, depth) in chosen]


def _arc_record(rec: dict[str, Any]) -> Sample:
    q = rec.get("question")
    if isinstance(q, dict):  # AI2 format
        stem = q["stem"]
        choices = [(c["label"], c["text"]) for c in q["choices"]]
    else:  # Hugging Face format
        ch = rec["choices"]
        choices = list(zip(list(ch["label"]), list(ch["text"]), strict=True))
        stem = q
    letters = tuple("ABCDEFGH"[i] for i in range(len(choices)))
    original = [str(label) for label, _ in choices]
    key = str(rec["answerKey"])
    if key not in original:
        raise DataError(f"ARC record {rec.get('id')}: answer {key!r} not among labels {original}")
    mc = MultipleChoice(str(stem), tuple(str(t) for _, t in choices), letters)
    return Sample(str(rec["id"]), mc, original.index(key))


def arc_challenge(path: Path | str, n: int | None = None, keep: Keep = None) -> list[Sample]:
    """ARC-Challenge questions from a ``.jsonl`` or ``.parquet`` file (labels 1-4 become A-D)."""
    path = _require(Path(path), "ARC-Challenge file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading .parquet needs pyarrow (pip install pyarrow)") from None
        records = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not a JSON line: {exc.msg}") from None
    else:
        raise DataError(f"ARC-Challenge file must be .jsonl or .parquet, got {path.name}")
    try:
        return [_arc_record(r) for _, r in _select(((str(r["id"]), r) for r in records), n, keep)]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: record without the ARC field {exc}") from None


def coco_captions(
    path: Path | str, n: int | None = None, images_dir: Path | str | None = None, seed: int = 0,
    keep: Keep = None,
) -> list[Sample]:
    """COCO captions: one prompt per image (its lowest-id caption), target = image path if ``images_dir``."""
    path = _require(Path(path), "COCO captions file")
    try:
        doc = json.loads(path.read_text())
        annotations = doc["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path} is not a COCO captions json (needs 'annotations')") from None
    files = {img["id"]: img["file_name"] for img in doc.get("images", [])}
    if images_dir is None and (path.parent.parent / "val2017").is_dir():  # COCO layout: annotations/ beside val2017/
        images_dir = path.parent.parent / "val2017"
    first: dict[int, dict[str, Any]] = {}
    for ann in sorted(annotations, key=lambda a: a["id"]):
        first.setdefault(ann["image_id"], ann)
    out = []
    for _, image_id in _select(((f"{i:012d}", i) for i in sorted(first)), n, keep):
        caption = " ".join(str(first[image_id]["caption"]).split())
        target = None
        if images_dir is not None:
            target = Path(images_dir) / files.get(image_id, f"{image_id:012d}.jpg")
        out.append(Sample(f"{image_id:012d}", Prompt(caption, seed + image_id), target))
    return out


TEXTILE_PACKAGE = "conformal_clip_data"
TEXTILE_CLASSES = ("global", "local", "nominal")
"""conformal-clip-data 0.1.4's simulated textile images (250 x 250 RGB JPEG): 500 with a global
defect, 500 with a local defect, 1000 nominal; labels are indices into this (sorted) tuple."""


def textile_root() -> Path:
    """``data/textile_images/simulated`` of the installed ``conformal_clip_data`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(TEXTILE_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        root = Path(folder) / "data" / "textile_images" / "simulated"
        if root.is_dir():
            return root
    from splitfc.common.models.pretrained import EXTRA_HINT

    raise DataError(f"labeled textile images need the package conformal-clip-data: {EXTRA_HINT}")


def textile_images(n: int | None = None, keep: Keep = None, root: Path | str | None = None) -> list[Sample]:
    """Labeled textile images (PyPI conformal-clip-data 0.1.4, MIT; `TEXTILE_CLASSES`), id
    ``textile-<class>-<number>``, ordered by file name then class (so classes interleave).
    With `is_train_id` as ``keep`` (or its negation) this is the fixed train / held-back split."""
    base = _require(Path(root), "textile images folder") if root is not None else textile_root()
    files = sorted(
        ((p.name, label, p) for label, name in enumerate(TEXTILE_CLASSES)
         for p in _require(base / name, "textile class folder").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda item: (item[0], item[1]),
    )
    chosen = _select(((f"textile-{TEXTILE_CLASSES[label]}-{Path(name).stem.removeprefix('textile_')}", (p, label))
                      for name, label, p in files), n, keep)
    return [Sample(i, read_image(p), label) for i, (p, label) in chosen]


def load_samples(split_id: str, path: Path | str, n: int | None = None, train: bool = False) -> list[Sample]:
    """Samples of a split's paper data set from a local path; ``train`` selects the disjoint training fifth."""
    from splitfc.common.tasks import get_task

    task = get_task(get_split(split_id).task)
    return task.load_samples(Path(path), n, lambda sample_id: is_train_id(sample_id) == train)


def builtin_samples(split_id: str, n: int, train: bool = False) -> list[Sample]:
    """The offline sample set of a split (`splitfc.common.builtin_data`, chosen by its task):
    deterministic, ``train=True`` disjoint from ``train=False``.

    Ground truth is absent for images (targets ``None``); questions carry their answer index.
    """
    if n < 0:
        raise DataError(f"number of samples must be >= 0, got {n}")
    from splitfc.common.tasks import get_task

    return get_task(get_split(split_id).task).builtin_samples(n, train)
