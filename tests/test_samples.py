"""`head_bitstreams`: the one helper that load and serving tools replay."""

from __future__ import annotations

import numpy as np
import pytest

from splitfc.common.bitstream import decode_features, parse_bitstream
from splitfc.common.codecs.raw import RawCodec
from splitfc.common.errors import UnknownNameError
from splitfc.common.models import get_split_model, tiny_samples
from splitfc.common.samples import head_bitstreams


def test_raw_bitstreams_decode_to_the_head_outputs_in_sample_order() -> None:
    data = head_bitstreams("dinov2-cls", "tiny", "raw", 0, 2)
    assert len(data) == 2 and all(isinstance(b, bytes) for b in data)
    model = get_split_model("dinov2-cls", "tiny")
    for blob, sample in zip(data, tiny_samples("dinov2-cls", 2), strict=True):
        msg = parse_bitstream(blob)
        assert (msg.split, msg.codec.codec, msg.codec.rate) == ("dinov2-cls", "raw", 0)
        features = decode_features(msg)
        assert features.dtype == np.float32
        np.testing.assert_array_equal(features, model.head(sample.inputs))


def test_a_codec_instance_is_used_as_given() -> None:
    (f32,) = head_bitstreams("dinov2-cls", "tiny", "raw", 0, 1)
    (f16,) = head_bitstreams("dinov2-cls", "tiny", RawCodec(store_dtype="float16"), 0, 1)
    assert len(parse_bitstream(f16).payload) * 2 == len(parse_bitstream(f32).payload)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("no-such-split", "tiny", "raw", 0, 1), UnknownNameError),
        (("dinov2-cls", "huge", "raw", 0, 1), UnknownNameError),
        (("dinov2-cls", "tiny", "no-such-codec", 0, 1), UnknownNameError),
        (("dinov2-cls", "tiny", "raw", 0, 0), ValueError),
        (("dinov2-cls", "tiny", "hyperprior", 99, 1), ValueError),
    ],
)
def test_bad_arguments_raise_before_any_model_runs(args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        head_bitstreams(*args)
