"""What a server tells about itself (``GetInfo``, ``/v1/info``): models, splits, codecs, limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitfc import __version__
from splitfc.common.bitstream import FORMAT_VERSION
from splitfc.common.codecs import CODECS
from splitfc.common.specs import SPLITS
from splitfc.common.tasks import get_task
from splitfc.v1 import service_pb2 as svc

if TYPE_CHECKING:
    from splitfc.cloud.engine import InferenceEngine


def server_info(engine: InferenceEngine) -> svc.ServerInfo:
    """Models, splits, codecs and limits (the ``GetInfo`` answer, served as JSON over HTTP too)."""
    s = engine.settings
    splits = []
    for split_id in engine.split_ids:
        spec = SPLITS[split_id]
        model = engine.models.get(split_id)
        shape = [0 if d is None else int(d) for d in model.expected_shape()] if model is not None else []
        splits.append(svc.SplitInfo(
            split=split_id, family=spec.family, task=spec.task, feature_shape=shape,
            max_elements=engine.max_elements(split_id), metric=get_task(spec.task).metric,
            model=(getattr(model, "model_name", "") or type(model).__name__) if model is not None else "",
        ))
    codecs = [
        svc.CodecInfo(
            name=name, available=engine.codec_status[name] is None, reason=engine.codec_status[name] or "",
            rate_name=cls.rate_name, rates=list(cls.rates),
        )
        for name, cls in CODECS.items()
    ]
    return svc.ServerInfo(
        version=__version__, preset=s.preset, ready=engine.ready, splits=splits, codecs=codecs,
        limits=svc.Limits(
            max_message_bytes=s.max_message_bytes, max_bitstream_bytes=s.max_bitstream_bytes,
            max_concurrency=s.max_concurrency, max_queue=s.max_queue,
        ),
        bitstream_format_version=FORMAT_VERSION,
    )
