"""Pre-/post-processing: packing layouts, exact inverses, quantization error bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from splitfc.common.errors import ShapeError
from splitfc.common.preprocess import dequantize, pack_frame, packed_shape, quantize, tile_grid, unpack_frame
from splitfc.common.specs import SPLITS, Packing, TruncationColumn, get_split

PAPER_FRAMES = {
    "dinov2-cls": ((257, 1536), (257, 1536)),
    "dinov2-seg": ((2, 1370, 1536), (2740, 1536)),
    "dinov2-dpt": ((2, 4, 1611, 1536), (3222, 6144)),
    "llama3-csr": ((77, 4096), (77, 4096)),
    "sd3-tti": ((16, 128, 128), (512, 512)),
}


@pytest.mark.parametrize("split", list(PAPER_FRAMES))
def test_paper_packed_shapes(split: str) -> None:
    shape, frame = PAPER_FRAMES[split]
    assert packed_shape(shape, get_split(split).packing) == frame


def test_dpt_packing_places_views_vertically_and_layers_side_by_side() -> None:
    v, la, t, c = 2, 4, 3, 5
    x = np.arange(v * la * t * c).reshape(v, la, t, c)
    frame = pack_frame(x, Packing.VIEWS_LAYERS)
    for vi in range(v):
        for li in range(la):
            np.testing.assert_array_equal(frame[vi * t:(vi + 1) * t, li * c:(li + 1) * c], x[vi, li])


def test_tti_packing_tiles_channels_row_major() -> None:
    x = np.arange(16 * 2 * 3).reshape(16, 2, 3)
    frame = pack_frame(x, Packing.TILE_CHANNELS)
    assert frame.shape == (8, 12)
    for k in range(16):
        r, col = divmod(k, 4)
        np.testing.assert_array_equal(frame[r * 2:(r + 1) * 2, col * 3:(col + 1) * 3], x[k])


@pytest.mark.parametrize(("channels", "grid"), [(16, (4, 4)), (4, (2, 2)), (8, (2, 4)), (12, (3, 4)), (7, (1, 7))])
def test_tile_grid(channels: int, grid: tuple[int, int]) -> None:
    assert tile_grid(channels) == grid


_dims = st.integers(1, 7)
_layouts = st.sampled_from([
    (Packing.AS_IS, 2), (Packing.STACK_VIEWS, 3), (Packing.VIEWS_LAYERS, 4), (Packing.TILE_CHANNELS, 3),
])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), layout=_layouts)
def test_unpack_inverts_pack_exactly(data: st.DataObject, layout: tuple[Packing, int]) -> None:
    packing, rank = layout
    shape = tuple(data.draw(_dims) for _ in range(rank))
    x = data.draw(arrays(np.uint16, shape, elements=st.integers(0, 1023)))
    frame = pack_frame(x, packing)
    assert frame.ndim == 2 and frame.shape == packed_shape(shape, packing)
    back = unpack_frame(np.ascontiguousarray(frame), shape, packing)
    np.testing.assert_array_equal(back, x)


_ranges = st.tuples(st.floats(-600, 50), st.floats(0.01, 650)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=200, deadline=None)
@given(
    rng=_ranges,
    bit_depth=st.sampled_from([8, 10, 12]),
    x=arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=32)),
)
def test_quantization_error_and_clamping(rng: tuple[float, float], bit_depth: int, x: np.ndarray) -> None:
    low, high = rng
    q = quantize(x, [rng], bit_depth=bit_depth)
    assert q.dtype == np.uint16
    assert int(q.max()) <= (1 << bit_depth) - 1
    y = dequantize(q, [rng], bit_depth=bit_depth)
    step = (high - low) / ((1 << bit_depth) - 1)
    clipped = np.clip(x.astype(np.float64), low, high)
    # Inside the range: within half a step (plus float32 output rounding).
    tol = step / 2 + 1e-6 * max(abs(low), abs(high), 1.0)
    assert np.all(np.abs(y.astype(np.float64) - clipped) <= tol)
    # Outside the range: clamped to the end levels, never wrapped.
    # (compared in float64, as quantize does: a float32 x may round onto the bound)
    assert np.all(q[x.astype(np.float64) <= low] == 0)
    assert np.all(q[x.astype(np.float64) >= high] == (1 << bit_depth) - 1)


def test_grouped_ranges_follow_the_layer_axis() -> None:
    spec = get_split("dinov2-dpt")
    ranges = spec.ranges(TruncationColumn.VTM)
    x = np.zeros((2, 4, 3, 5), dtype=np.float32)
    for layer, (_, high) in enumerate(ranges):
        x[:, layer] = high * 10  # far above each layer's range
    q = quantize(x, ranges, spec.group_axis)
    assert np.all(q == 1023)
    y = dequantize(q, ranges, spec.group_axis)
    for layer, (_, high) in enumerate(ranges):
        np.testing.assert_allclose(y[:, layer], high, rtol=1e-6)


def test_table4_ranges() -> None:
    assert get_split("dinov2-cls").ranges(TruncationColumn.VTM) == ((-20.0, 20.0),)
    assert get_split("dinov2-cls").ranges(TruncationColumn.HYPERPRIOR) == ((-5.0, 5.0),)
    assert get_split("dinov2-dpt").ranges(TruncationColumn.HYPERPRIOR)[3] == (-10.0, 10.0)
    assert get_split("llama3-csr").ranges(TruncationColumn.VTM) == ((-5.0, 5.0),)
    assert get_split("sd3-tti").ranges(TruncationColumn.VTM) == ((-5.79, 4.46),)
    assert set(SPLITS) == {"dinov2-cls", "dinov2-seg", "dinov2-dpt", "llama3-csr", "sd3-tti"}


@pytest.mark.parametrize(
    ("split", "shape"),
    [("dinov2-seg", (1370, 1536)), ("dinov2-dpt", (2, 3, 16, 8)), ("sd3-tti", (16, 0, 4)), ("llama3-csr", (4,))],
)
def test_shapes_that_do_not_fit_the_split_are_refused(split: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=split):
        get_split(split).check_shape(shape)


def test_rounding_rule_at_bin_edges() -> None:
    """Stated in `quantize`: scaled values exactly on a bin edge (k + 0.5) round half to even."""
    levels = 1023
    k = np.arange(0, levels, dtype=np.float64)
    x = (k + 0.5).astype(np.float32)  # exact in float32; the range [0, 1023] scales by 1
    q = quantize(x, [(0.0, float(levels))])
    np.testing.assert_array_equal(q, np.where(k % 2 == 0, k, k + 1).astype(np.uint16))
    # just inside an edge on either side goes to the nearer level
    below = np.nextafter(x, np.float32(-np.inf))
    above = np.nextafter(x, np.float32(np.inf))
    np.testing.assert_array_equal(quantize(below, [(0.0, 1023.0)]), k.astype(np.uint16))
    np.testing.assert_array_equal(quantize(above, [(0.0, 1023.0)]), (k + 1).astype(np.uint16))


def _reference_quantize(x: np.ndarray, low: np.ndarray, high: np.ndarray, levels: int) -> np.ndarray:
    """The rule of `quantize` on the whole tensor at once, in float64."""
    return np.rint((np.clip(x.astype(np.float64), low, high) - low) * (levels / (high - low))).astype(np.uint16)


@pytest.mark.parametrize("block", [1, 7, 100, 5000, 1 << 20])
def test_blocked_quantization_equals_the_whole_tensor_rule(block: int, monkeypatch) -> None:
    """Blocks of any size (one element, part of a row, several rows) give the same levels as the
    whole-tensor rule, with per-layer ranges on their own axis (a block mixing layers would fail)."""
    import splitfc.common.preprocess as pre

    monkeypatch.setattr(pre, "BLOCK_ELEMENTS", block)
    spec = get_split("dinov2-dpt")
    ranges = spec.ranges(TruncationColumn.VTM)
    x = np.random.default_rng(4).standard_normal((2, 4, 9, 13)).astype(np.float32) * 30
    low = np.asarray([r[0] for r in ranges]).reshape(1, 4, 1, 1)
    high = np.asarray([r[1] for r in ranges]).reshape(1, 4, 1, 1)
    q = quantize(x, ranges, spec.group_axis)
    np.testing.assert_array_equal(q, _reference_quantize(x, low, high, 1023))
    y = dequantize(q, ranges, spec.group_axis)
    assert y.flags.c_contiguous and y.dtype == np.float32
    np.testing.assert_array_equal(y, (q * ((high - low) / 1023) + low).astype(np.float32))
    # a transposed (non-contiguous) input of the same values gives the same levels
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(quantize(xt, ranges, spec.group_axis), q)


def test_quantization_memory_is_bounded() -> None:
    """Extra memory of quantize/dequantize: one float64 block beside the output (was float64 copies of the
    whole tensor: 453 MiB peak on a paper-size Dpt feature)."""
    import tracemalloc

    from splitfc.common.preprocess import BLOCK_ELEMENTS

    x = np.random.default_rng(0).standard_normal((2, 4, 1611, 1536), dtype=np.float32)
    ranges = get_split("dinov2-dpt").ranges(TruncationColumn.VTM)
    tracemalloc.start()
    try:
        q = quantize(x, ranges, 1)
        _, peak_q = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        y = dequantize(q, ranges, 1)
        _, peak_d = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    block = 8 * BLOCK_ELEMENTS
    slack = 1 << 20
    assert peak_q <= q.nbytes + block + slack, peak_q
    assert peak_d - base <= y.nbytes + block + slack, peak_d - base
