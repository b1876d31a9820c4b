"""The built-in offline samples of the ``tiny`` preset: scikit-image's bundled images (and
deterministic crops of them), multiple-choice questions and captions written for this project.

Evaluation and training sets use disjoint sources. Each task module picks its pool
(`splitfc.common.tasks`); `splitfc.common.data.builtin_samples` dispatches by split.
"""

from __future__ import annotations

import zlib

import numpy as np

from splitfc.common.models.base import MultipleChoice, Prompt, Sample

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
SUBJECTS_EVAL = ("a small robot", "an orange cat", "a paper boat", "a glass bottle", "a green umbrella")
SUBJECTS_TRAIN = ("a brown bear", "a red kite", "a white teapot", "a tall cactus", "a striped scarf")
_PLACES = ("on a beach", "in a library", "under a bridge", "in the snow", "on a rooftop", "in a garden")


def _skimage_image(name: str) -> np.ndarray:
    from skimage import data as skdata

    arr = np.asarray(getattr(skdata, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.uint8))


def image_samples(pool: tuple[str, ...], n: int, salt: int) -> list[Sample]:
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


def question_samples(pool: tuple[tuple[str, tuple[str, ...], int], ...], n: int, train: bool) -> list[Sample]:
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


def caption_samples(captions: tuple[str, ...], subjects: tuple[str, ...], n: int, train: bool) -> list[Sample]:
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


def builtin_images(n: int, train: bool) -> list[Sample]:
    """``n`` image samples (HxWx3 uint8, no target) for the DINOv2 tasks."""
    return image_samples(TRAIN_IMAGES if train else EVAL_IMAGES, n, salt=2 if train else 1)


def builtin_questions(n: int, train: bool) -> list[Sample]:
    """``n`` multiple-choice questions with their answer index (CSR)."""
    return question_samples(TRAIN_QUESTIONS if train else EVAL_QUESTIONS, n, train)


def builtin_prompts(n: int, train: bool) -> list[Sample]:
    """``n`` captions as text-to-image prompts with seeds (TTI)."""
    return caption_samples(TRAIN_CAPTIONS if train else EVAL_CAPTIONS,
                           SUBJECTS_TRAIN if train else SUBJECTS_EVAL, n, train)
