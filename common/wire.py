"""Task outputs on the wire: `TaskOutput` <-> ``splitfc.v1.TaskResult`` (service.proto).

The cloud turns a model's `TaskOutput` into a `TaskResult`; the edge turns it
back; each task fills its own field (`splitfc.common.tasks`). Arrays travel as
little-endian bytes with shape and dtype; images as PNG.
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
    """Encode a model's task output for the response (the task's own field of ``TaskResult``)."""
    from splitfc.common.tasks import get_task

    try:
        task = get_task(out.task)
    except SplitfcError:
        raise SplitfcError(f"unknown task {out.task!r}") from None
    res = svc.TaskResult(task=out.task)
    task.to_proto(out, res)
    return res


def task_result_from_proto(res: svc.TaskResult) -> TaskOutput:
    """Decode a response's task result by the output field it carries (cls ``probs``: the top 5 only)."""
    from splitfc.common.tasks import TASKS, task_for_proto_field

    kind = res.WhichOneof("output")
    named = TASKS.get(res.task)
    task = named if named is not None and named.proto_field == kind else task_for_proto_field(kind) if kind else None
    if task is None:
        raise SplitfcError(f"task result for {res.task[:32]!r} carries no output")
    return task.from_proto(res)
