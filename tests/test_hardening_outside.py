"""Outside review of issue 13 (client strings): every echoed client string is cut with the
``...(N chars)`` marker of `splitfc.common.untrusted.quote`, so a reader can tell it was cut."""

from __future__ import annotations

import pytest

from splitfc.common.bitstream import decode_features, encode_features
from splitfc.common.errors import SplitfcError
from splitfc.common.models import get_split_model, tiny_samples


@pytest.mark.parametrize("length", [10, 500_000])
def test_a_long_packing_name_is_quoted_with_its_length(length: int) -> None:
    model = get_split_model("dinov2-cls", "tiny")
    msg = encode_features(model.head(tiny_samples("dinov2-cls", 1)[0].inputs), "dinov2-cls", "hevc", 32)
    msg.preprocessing.packing = "P" * length
    with pytest.raises(SplitfcError) as err:
        decode_features(msg)
    text = str(err.value)
    assert "does not match split dinov2-cls" in text
    if length > 64:
        assert f"'{'P' * 64}'...({length} chars)" in text
        assert len(text) < 200
    else:
        assert f"'{'P' * length}'" in text and "chars)" not in text
