"""The split-model interface: ``head`` (edge) and ``tail`` (cloud + task head).

One model family is one module in this package that registers a builder per
split id. ``tail(head(x))`` must equal the unsplit model's output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitfc.common.specs import SplitSpec

PRESETS = ("tiny", "paper")


@dataclass
class Sample:
    """One input of a task: an image (HxWx3 uint8), a prompt, a question with choices, ..."""

    id: str
    inputs: Any
    target: Any | None = None
    """Ground truth (class id, mask, depth map, answer index, reference image) when known."""


@dataclass
class TaskOutput:
    """What ``tail`` returns; the fields used depend on the task.

    cls: ``label`` (class id) and ``probs`` (class probabilities);
    seg: ``mask`` (HxW int class ids); dpt: ``depth`` (HxW float, metres);
    csr: ``label`` (answer index), ``probs`` over the choices, ``choices`` (letters);
    tti: ``image`` (HxWx3 uint8).
    """

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

    @abstractmethod
    def head(self, inputs: Any) -> np.ndarray:
        """Edge part: task input -> feature tensor in the split's layout (float32/float16)."""

    @abstractmethod
    def tail(self, features: np.ndarray) -> TaskOutput:
        """Cloud part: feature tensor -> task output (rest of the model + task head)."""

    @abstractmethod
    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        """The same model run in one piece, the reference for ``tail(head(x))``."""

    @abstractmethod
    def expected_shape(self) -> tuple[int | None, ...]:
        """Feature shape this model produces (``None`` for a variable token count)."""
