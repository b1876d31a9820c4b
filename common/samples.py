"""Ready-made bitstreams: a split model's head on the built-in samples, coded as the edge codes them.

Load and serving tools (``splitfc bench-serving``, ``splitfc soak``, the locustfile under
``deploy/locust/``) replay such bitstreams so that the edge's CPU cost stays out of what they measure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitfc.common.codecs import Codec


def head_bitstreams(split: str, preset: str, codec: str | Codec, rate: int, count: int) -> list[bytes]:
    """Serialized `FeatureBitstream` messages of ``split``'s head on its first ``count`` built-in samples.

    Sample ``i`` is ``tiny_samples(split, count)[i]`` (deterministic, offline, for either preset);
    the model is ``get_split_model(split, preset)`` (built once per process). Each head output is one
    float32 array of the split's layout (tiny preset: dinov2-cls 65x128, dinov2-seg 2x65x128,
    dinov2-dpt 2x4x81x128, llama3-csr Nx128 with N the prompt's tokens, sd3-tti 16x16x16), coded by
    `encode_features` with ``codec`` (a registered name or an instance, e.g. ``RawCodec("float16")``)
    at ``rate`` (0 for codecs without a rate). The result is ``count`` ``bytes`` objects, each the
    message's ``SerializeToString()`` (no ``.sfc`` file magic), ready to send as
    ``InferRequest.bitstream``; their order is the samples' order.

    Raises `UnknownNameError` for an unknown split, preset or codec name, `CodecUnavailableError`
    when the codec cannot run here (e.g. no ffmpeg with libvvenc), ``ValueError`` when ``count`` < 1
    or ``rate`` is outside the codec's range, and whatever coding raises (`NonFiniteError` for
    features a raw store dtype cannot hold, `CodecError` when an encoder fails).
    """
    from splitfc.common.bitstream import encode_features
    from splitfc.common.codecs import get_codec
    from splitfc.common.models import check_preset, get_split_model, tiny_samples
    from splitfc.common.specs import get_split

    check_preset(preset)
    spec = get_split(split, preset)  # the preset's truncation ranges
    codec_obj = get_codec(codec) if isinstance(codec, str) else codec
    codec_obj.require_available()
    if codec_obj.rate_name != "none":
        codec_obj.check_rate(rate)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    model = get_split_model(split, preset=preset)
    return [
        encode_features(model.head(sample.inputs), spec, codec_obj, rate).SerializeToString()
        for sample in tiny_samples(split, count)
    ]


__all__ = ["head_bitstreams"]
