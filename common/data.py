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

`builtin_samples` is the offline set of the ``tiny`` preset: scikit-image's bundled
images (and deterministic crops of them), multiple-choice questions and captions
written for this project; evaluation and training sets use disjoint sources.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError, UnknownNameError
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


LOADERS: dict[str, Callable[..., list[Sample]]] = {
    "cls": imagenet_val,
    "seg": voc2012,
    "dpt": nyu_depth_v2,
    "csr": arc_challenge,
    "tti": coco_captions,
}


def load_samples(split_id: str, path: Path | str, n: int | None = None, train: bool = False) -> list[Sample]:
    """Samples of a split's paper data set from a local path; ``train`` selects the disjoint training fifth."""
    task = get_split(split_id).task
    return LOADERS[task](path, n=n, keep=lambda sample_id: is_train_id(sample_id) == train)


# --------------------------------------------------------------------------------------------
# built-in offline samples (tiny preset)

EVAL_IMAGES = (
    "astronaut", "camera", "cat", "chelsea", "coffee", "coins",
    "horse", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel", "clock",
)
TRAIN_IMAGES = ("brick", "grass", "gravel", "moon", "page", "text", "retina", "logo", "microaneurysms", "checkerboard")

EVAL_QUESTIONS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("Which gas do plants take in from the air to make food?", ("oxygen", "carbon dioxide", "nitrogen", "helium"), 1),
    ("What makes a compass needle point north?", ("wind", "gravity", "the magnetic field of the Earth", "sunlight"), 2),
    ("Which of these is a mammal?", ("shark", "frog", "whale", "eagle"), 2),
    ("What happens to water when it freezes?", ("it becomes a solid", "it becomes a gas", "it boils",
                                                "it turns to salt"), 0),
    ("Which object is a good conductor of electricity?", ("rubber band", "copper wire", "wooden spoon",
                                                          "glass cup"), 1),
    ("What causes day and night on Earth?", ("the Moon orbits the Earth", "the Earth rotates on its axis",
                                             "the Sun moves around the Earth", "clouds block the Sun"), 1),
    ("Which part of a plant takes in water from the soil?", ("flower", "leaf", "stem", "root"), 3),
    ("What is the main source of energy for the water cycle?", ("the Sun", "the Moon", "wind", "volcanoes"), 0),
    ("Which tool is used to measure temperature?", ("ruler", "thermometer", "scale", "barometer"), 1),
    ("Which planet is closest to the Sun?", ("Venus", "Earth", "Mercury", "Mars"), 2),
    ("A student rubs her hands together. What form of energy is produced?", ("sound only", "heat",
                                                                             "light", "nuclear"), 1),
    ("Which of these is a renewable resource?", ("coal", "oil", "natural gas", "wind"), 3),
    ("What do animals need to release energy from food?", ("oxygen", "sand", "salt", "nitrogen"), 0),
    ("Which layer of the Earth do we live on?", ("mantle", "outer core", "crust", "inner core"), 2),
    ("A ball rolls down a hill. Which force pulls it down?", ("friction", "gravity", "magnetism", "tension"), 1),
    ("Which change is a chemical change?", ("melting ice", "cutting paper", "burning wood", "boiling water"), 2),
)
TRAIN_QUESTIONS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("Which organ pumps blood through the body?", ("lungs", "heart", "liver", "stomach"), 1),
    ("What is the boiling point of water at sea level in Celsius?", ("50", "90", "100", "120"), 2),
    ("Which material is attracted to a magnet?", ("iron", "plastic", "paper", "cotton"), 0),
    ("What shape is the orbit of the Earth around the Sun?", ("square", "nearly circular", "triangle",
                                                               "straight line"), 1),
    ("Which animal lays eggs?", ("dog", "cow", "chicken", "horse"), 2),
    ("What do bees collect from flowers?", ("nectar", "bark", "sand", "stones"), 0),
    ("Which state of matter has a fixed shape?", ("gas", "liquid", "plasma", "solid"), 3),
    ("What is used to see very small living things?", ("telescope", "microscope", "periscope", "mirror"), 1),
)

EVAL_CAPTIONS = (
    "A red bicycle leaning against a brick wall.",
    "A cat sleeping on a wooden table near a window.",
    "Two boats floating on a calm lake at sunset.",
    "A plate of pasta with tomato sauce and basil.",
    "A snowy mountain under a clear blue sky.",
    "A child flying a kite on a sandy beach.",
    "A yellow taxi driving through a busy city street.",
    "A bowl of fresh fruit on a kitchen counter.",
    "A dog running across a green field.",
    "An old clock tower in the middle of a town square.",
    "A cup of coffee next to an open book.",
    "A train crossing a bridge over a river.",
)
TRAIN_CAPTIONS = (
    "A horse standing in a fenced meadow.",
    "A lighthouse on a rocky coast at dawn.",
    "A stack of pancakes with honey on top.",
    "A bird sitting on a branch in the rain.",
    "A wooden cabin in a pine forest.",
    "A group of people walking in a park.",
    "A blue car parked beside a fountain.",
    "A vase of sunflowers on a windowsill.",
)
_SUBJECTS_EVAL = ("a small robot", "an orange cat", "a paper boat", "a glass bottle", "a green umbrella")
_SUBJECTS_TRAIN = ("a brown bear", "a red kite", "a white teapot", "a tall cactus", "a striped scarf")
_PLACES = ("on a beach", "in a library", "under a bridge", "in the snow", "on a rooftop", "in a garden")


def _skimage_image(name: str) -> np.ndarray:
    from skimage import data as skdata

    arr = np.asarray(getattr(skdata, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.uint8))


def _image_samples(pool: tuple[str, ...], n: int, salt: int) -> list[Sample]:
    images = {name: _skimage_image(name) for name in pool[: min(n, len(pool))] or pool[:1]}
    out = []
    for k in range(n):
        name = pool[k % len(pool)]
        if name not in images:
            images[name] = _skimage_image(name)
        image = images[name]
        if k < len(pool):
            out.append(Sample(name, image))
            continue
        rng = np.random.default_rng([salt, k])
        h, w = image.shape[:2]
        frac = rng.uniform(0.5, 0.9)
        ch, cw = max(16, int(h * frac)), max(16, int(w * frac))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = image[top : top + ch, left : left + cw]
        if rng.integers(0, 2):
            crop = crop[:, ::-1]
        out.append(Sample(f"{name}-crop{k}", np.ascontiguousarray(crop)))
    return out


def _question_samples(pool: tuple[tuple[str, tuple[str, ...], int], ...], n: int, train: bool) -> list[Sample]:
    out = []
    prefix = "train" if train else "eval"
    for k in range(n):
        if k < len(pool):
            q, choices, answer = pool[k]
            out.append(Sample(f"{prefix}-q{k:03d}", MultipleChoice(q, choices), answer))
            continue
        rng = np.random.default_rng([7 if train else 3, k])
        a, b = (int(v) for v in rng.integers(2, 20, size=2))
        right = a * b if train else a + b
        op = "times" if train else "plus"
        wrong = sorted({right + d for d in (-2, -1, 1, 2, 3)} - {right})[:3]
        choices = [*wrong, right]
        order = rng.permutation(4)
        shuffled = tuple(str(choices[i]) for i in order)
        out.append(Sample(f"{prefix}-q{k:03d}", MultipleChoice(f"What is {a} {op} {b}?", shuffled),
                          int(np.where(order == 3)[0][0])))
    return out


def _caption_samples(captions: tuple[str, ...], subjects: tuple[str, ...], n: int, train: bool) -> list[Sample]:
    prefix = "train" if train else "eval"
    out = []
    for k in range(n):
        if k < len(captions):
            text = captions[k]
        else:
            j = k - len(captions)
            text = f"A photo of {subjects[j % len(subjects)]} {_PLACES[(j // len(subjects)) % len(_PLACES)]}."
            if j >= len(subjects) * len(_PLACES):
                text = text[:-1] + f", picture {j // (len(subjects) * len(_PLACES))}."
        seed = zlib.crc32(f"{prefix}-{k}".encode())
        out.append(Sample(f"{prefix}-c{k:03d}", Prompt(text, seed)))
    return out


def builtin_samples(split_id: str, n: int, train: bool = False) -> list[Sample]:
    """The offline sample set of a split: deterministic, ``train=True`` disjoint from ``train=False``.

    Ground truth is absent for images (targets ``None``); questions carry their answer index.
    """
    if n < 0:
        raise DataError(f"number of samples must be >= 0, got {n}")
    task = get_split(split_id).task
    if task in ("cls", "seg", "dpt"):
        return _image_samples(TRAIN_IMAGES if train else EVAL_IMAGES, n, salt=2 if train else 1)
    if task == "csr":
        return _question_samples(TRAIN_QUESTIONS if train else EVAL_QUESTIONS, n, train)
    if task == "tti":
        return _caption_samples(TRAIN_CAPTIONS if train else EVAL_CAPTIONS,
                                _SUBJECTS_TRAIN if train else _SUBJECTS_EVAL, n, train)
    raise UnknownNameError(f"no built-in samples for task {task!r}")
