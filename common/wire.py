"""Task outputs on the wire: `TaskOutput` <-> ``splitfc.v1.TaskResult`` (service.proto).

The cloud turns a model's `TaskOutput` into a `TaskResult`; the edge turns it
back. Arrays travel as little-endian bytes with shape and dtype; images as PNG.
"""

from __future__ import annotations

import io

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import TaskOutput
from splitfc.v1 import service_pb2 as svc

ARRAY_DTYPES = ("uint8", "uint16", "int32", "float32")
TOP_K = 5


def array_to_proto(x: np.ndarray) -> svc.Array:
    """An array as little-endian bytes; integer masks use the smallest dtype that holds them."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        lo = int(x.min()) if x.size else 0
        hi = int(x.max()) if x.size else 0
        if lo >= 0 and hi < 256:
            dtype = "uint8"
        elif lo >= 0 and hi < 65536:
            dtype = "uint16"
        else:
            dtype = "int32"
    else:
        dtype = "float32"
    data = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return svc.Array(shape=list(x.shape), dtype=dtype, data=data)


def array_from_proto(a: svc.Array) -> np.ndarray:
    if a.dtype not in ARRAY_DTYPES:
        raise SplitfcError(f"unknown array dtype {a.dtype!r} in a task result")
    dtype = np.dtype(a.dtype).newbyteorder("<")
    shape = tuple(int(s) for s in a.shape)
    count = int(np.prod(shape)) if shape else 1
    if len(a.data) != count * dtype.itemsize:
        raise SplitfcError(f"task result array of shape {shape} {a.dtype} has {len(a.data)} bytes")
    return np.frombuffer(a.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an HxWx3 (or HxW) uint8 image as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise SplitfcError(f"task result image is not a readable PNG: {exc}") from None


def top_k(probs: np.ndarray, k: int = TOP_K) -> tuple[list[int], list[float]]:
    """Ids and probabilities of the ``k`` most probable classes, most probable first (ties: lower id)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    order = np.lexsort((np.arange(p.size), -p))[:k]
    return [int(i) for i in order], [float(p[i]) for i in order]


def task_result_to_proto(out: TaskOutput) -> svc.TaskResult:
    """Encode a model's task output for the response."""
    res = svc.TaskResult(task=out.task)
    if out.task == "cls":
        if out.label is None or out.probs is None:
            raise SplitfcError("cls output needs label and probs")
        ids, ps = top_k(out.probs)
        res.classification.CopyFrom(
            svc.Classification(label=int(out.label), top5_ids=ids, top5_probs=ps, num_classes=int(np.size(out.probs)))
        )
    elif out.task == "seg":
        if out.mask is None:
            raise SplitfcError("seg output needs a mask")
        res.segmentation.mask.CopyFrom(array_to_proto(np.asarray(out.mask)))
    elif out.task == "dpt":
        if out.depth is None:
            raise SplitfcError("dpt output needs a depth map")
        res.depth.depth.CopyFrom(array_to_proto(np.asarray(out.depth, dtype=np.float32)))
    elif out.task == "csr":
        if out.label is None or out.probs is None:
            raise SplitfcError("csr output needs label and probs")
        choices = list(out.choices) or [chr(ord("A") + i) for i in range(np.size(out.probs))]
        res.answer.CopyFrom(
            svc.Answer(
                letter=choices[int(out.label)], index=int(out.label), choices=choices,
                probs=[float(p) for p in np.ravel(out.probs)],
            )
        )
    elif out.task == "tti":
        if out.image is None:
            raise SplitfcError("tti output needs an image")
        img = np.asarray(out.image)
        res.image.CopyFrom(svc.GeneratedImage(png=png_bytes(img), height=img.shape[0], width=img.shape[1]))
    else:
        raise SplitfcError(f"unknown task {out.task!r}")
    return res


def task_result_from_proto(res: svc.TaskResult) -> TaskOutput:
    """Decode a response's task result. cls ``probs`` holds the top-5 only (others 0)."""
    kind = res.WhichOneof("output")
    if kind == "classification":
        c = res.classification
        probs = np.zeros(max(c.num_classes, (max(c.top5_ids) + 1) if c.top5_ids else 0), dtype=np.float32)
        probs[list(c.top5_ids)] = list(c.top5_probs)
        return TaskOutput(task=res.task, label=int(c.label), probs=probs)
    if kind == "segmentation":
        return TaskOutput(task=res.task, mask=array_from_proto(res.segmentation.mask))
    if kind == "depth":
        return TaskOutput(task=res.task, depth=array_from_proto(res.depth.depth))
    if kind == "answer":
        a = res.answer
        probs = np.asarray(a.probs, np.float32)
        return TaskOutput(task=res.task, label=int(a.index), probs=probs, choices=list(a.choices))
    if kind == "image":
        return TaskOutput(task=res.task, image=png_decode(res.image.png))
    raise SplitfcError(f"task result for {res.task!r} carries no output")
