"""Per-preset truncation ranges (issue 14): the stated rule, the spec plumbing, the bitstream carrying them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import splitfc.common.models as models_pkg
from splitfc.cli import main
from splitfc.common.codecs.base import CodedFrame, FrameCodec
from splitfc.common.feature_ranges import choose_range, measure_ranges, nice_ceiling
from splitfc.common.specs import SPLITS, SplitSpec, TruncationColumn, get_split, register_split

VTM, HYP = TruncationColumn.VTM, TruncationColumn.HYPERPRIOR


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.3, 0.5), (1.0, 1.0), (1.01, 2.0), (4.9, 5.0), (5.0, 5.0), (7.7, 10.0), (11.0, 20.0), (123.0, 200.0)],
)
def test_nice_ceiling_is_the_next_1_2_5_value(x: float, expected: float) -> None:
    assert nice_ceiling(x) == expected


def test_choose_range_truncates_symmetrically_or_keeps_the_measured_range() -> None:
    assert choose_range(3.2, -540.0, 94.0) == (-5.0, 5.0)  # massive outliers: [-a, a]
    assert choose_range(3.9, -4.47, 3.01) == (-4.47, 3.01)  # [-5, 5] holds it all: the measured range
    assert choose_range(4.2, -4.791, 4.461) == (-4.8, 4.47)  # rounded outward
    assert choose_range(4.2, -26.4, 3.001) == (-5.0, 3.01)  # truncated below, the measured maximum above
    with pytest.raises(ValueError):
        choose_range(1.0, 2.0, 1.0)


def test_measure_ranges_per_layer_follows_the_rule() -> None:
    spec = get_split("dinov2-dpt")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 4, 50, 100)).astype(np.float32)
    x[:, 1] *= 3.0  # |x| p99.9 about 3 -> a = 5, holds [-3, 3]: the measured range
    x[:, 3] *= 8.0
    x[0, 3, 0, :3] = (-300.0, 250.0, 120.0)  # three outliers among 10,000 points of layer 4
    groups = measure_ranges([x, x * 0.5], spec)
    assert len(groups) == 4 and all(g.points == 2 * 2 * 50 * 100 for g in groups)
    assert groups[0].vtm == (-1.0, 1.0) and groups[0].hyperprior == (-1.0, 1.0)
    assert groups[1].vtm == (np.floor(x[:, 1].min() * 100) / 100, np.ceil(x[:, 1].max() * 100) / 100)
    assert groups[3].low == -300.0 and groups[3].high == 250.0
    assert groups[3].vtm == (-10.0, 10.0)  # p99.9 of |x| is ~8, the outliers are cut
    assert groups[3].abs_p99 <= groups[3].abs_p999


def test_measure_ranges_refuses_bad_features() -> None:
    spec = get_split("dinov2-cls")
    with pytest.raises(ValueError, match="no features"):
        measure_ranges([], spec)
    with pytest.raises(ValueError, match="NaN"):
        measure_ranges([np.full((3, 4), np.nan, dtype=np.float32)], spec)


# ----------------------------------------------------------------------------- the spec plumbing

SMALL = {VTM: ((-3.0, 3.0),), HYP: ((-2.0, 2.0),)}


@pytest.fixture
def toy_spec() -> Iterator[SplitSpec]:
    spec = replace(
        get_split("dinov2-cls"), id="toy-ranges", family="toyranges",
        preset_truncation={"small": SMALL}, preset_original_range={"small": ((-40.0, 7.0),)},
    )
    register_split(spec)
    try:
        yield spec
    finally:
        SPLITS.pop(spec.id, None)
        models_pkg.FAMILIES.pop("toyranges", None)
        models_pkg.FAMILY_PRESETS.pop("toyranges", None)


def test_tiny_and_paper_keep_table_4(toy_spec: SplitSpec) -> None:
    for split in ("dinov2-cls", "dinov2-dpt", "llama3-csr", "sd3-tti"):
        for preset in (None, "tiny", "paper"):
            assert get_split(split, preset) is SPLITS[split]
    assert get_split("toy-ranges", "tiny") is toy_spec
    assert get_split("toy-ranges", "tiny").ranges(VTM) == ((-20.0, 20.0),)


def test_a_preset_with_its_own_ranges_gets_them(toy_spec: SplitSpec) -> None:
    small = get_split("toy-ranges", "small")
    assert small.ranges(VTM) == ((-3.0, 3.0),) and small.ranges(HYP) == ((-2.0, 2.0),)
    assert small.original_range == ((-40.0, 7.0),)
    assert small.id == toy_spec.id and small.packing == toy_spec.packing


def test_register_split_refuses_ranges_of_another_group_count() -> None:
    bad = replace(get_split("dinov2-dpt"), id="toy-bad-ranges", preset_truncation={"small": {VTM: ((-1.0, 1.0),)}})
    with pytest.raises(ValueError, match="must be 4 ranges"):
        register_split(bad)
    assert "toy-bad-ranges" not in SPLITS


class IdentityFrameCodec(FrameCodec):
    """A lossless frame codec (test only): the frame's bytes."""

    name: ClassVar[str] = "identity-test"
    description: ClassVar[str] = "test"
    truncation: ClassVar = VTM

    def encode_frame(self, frame: np.ndarray, rate: int, spec: SplitSpec | None = None) -> CodedFrame:
        return CodedFrame(frame.astype("<u2").tobytes(), {}, frame)

    def decode_frame(self, payload, height, width, rate, extra, spec=None) -> np.ndarray:
        return np.frombuffer(payload, dtype="<u2").reshape(height, width).astype(np.uint16)


def test_the_bitstream_carries_the_preset_ranges(toy_spec: SplitSpec) -> None:
    x = np.linspace(-30, 30, 5 * 8, dtype=np.float32).reshape(5, 8)
    codec = IdentityFrameCodec()
    small = codec.encode(x, get_split("toy-ranges", "small"), 0)
    paper = codec.encode(x, get_split("toy-ranges", "tiny"), 0)
    assert small.frame.ranges == ((-3.0, 3.0),) and paper.frame.ranges == ((-20.0, 20.0),)
    # The decoder is given the Table 4 spec: the ranges come from the header, not from the spec.
    decoded = codec.decode(small, toy_spec, x.shape, np.dtype(np.float32), 0)
    assert decoded.min() == pytest.approx(-3.0) and decoded.max() == pytest.approx(3.0)
    inside = np.abs(x) < 2.9
    assert np.abs(decoded[inside] - x[inside]).max() < 6.0 / 1023
    assert codec.decode(paper, toy_spec, x.shape, np.dtype(np.float32), 0).max() == pytest.approx(20.0)


def test_a_built_model_carries_its_preset_spec(toy_spec: SplitSpec) -> None:
    class Model:
        model_name = "toy"

        def __init__(self, spec: SplitSpec, preset: str) -> None:
            self.spec, self.preset = spec, preset

    models_pkg.register_family(
        "toyranges", lambda split_id, preset, **kw: Model(SPLITS[split_id], preset), presets=("tiny", "small")
    )
    assert models_pkg.build_split_model("toy-ranges", "small").spec.ranges(VTM) == ((-3.0, 3.0),)
    assert models_pkg.build_split_model("toy-ranges", "tiny").spec is toy_spec


def test_feature_ranges_command_measures_a_folder(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.normal(0, 1, size=(50, 64)).astype(np.float32) for _ in range(3)]
    arrays[0][0, 0] = -500.0
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"s{i}.npy", a)
    out = tmp_path / "ranges.json"
    assert main(["feature-ranges", "--split", "dinov2-cls", "--features", str(tmp_path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = measure_ranges(arrays, get_split("dinov2-cls"))[0]
    high = np.ceil(max(a.max() for a in arrays) * 100) / 100  # normal(0, 1): below 5
    assert result["groups"][0]["vtm"] == list(expected.vtm) == [-5.0, high]
    assert result["groups"][0]["low"] == -500.0
    assert result["paper_table4"]["vtm"] == [[-20.0, 20.0]]
    assert f"[-5, {high:g}]" in capsys.readouterr().out


def test_feature_ranges_command_bad_folder_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["feature-ranges", "--split", "dinov2-cls", "--features", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


@pytest.mark.parametrize("split", ["dinov2-cls", "dinov2-seg", "dinov2-dpt", "llama3-csr", "sd3-tti"])
def test_small_ranges_have_the_rule_s_form(split: str) -> None:
    """Each small range is [-a, a] with a on the 1-2-5 series, or the measured range rounded outward."""
    small = get_split(split, "small")
    assert small is not SPLITS[split] and small.truncation != SPLITS[split].truncation
    measured = small.original_range
    for column in (VTM, HYP):
        ranges = small.ranges(column)
        assert len(ranges) == len(measured)
        for (low, high), (m_low, m_high) in zip(ranges, measured, strict=True):
            for bound, edge in ((-low, -m_low), (high, m_high)):
                # a 1-2-5 value that cuts the measured range, or the measured edge rounded outward
                cuts = nice_ceiling(bound) == bound and bound < edge
                assert cuts or 0 <= bound - edge <= 0.011, (column, bound, edge)
    for (vl, vh), (hl, hh) in zip(small.ranges(VTM), small.ranges(HYP), strict=True):
        assert vl <= hl and hh <= vh  # Hyperprior (p99) never wider than VTM (p99.9)
