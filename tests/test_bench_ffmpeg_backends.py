"""``splitfc bench-ffmpeg-backends``: both backends really run, side by side, in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitfc.cli import main
from splitfc.cli.bench_ffmpeg import ffmpeg_backend, pyav_encodes, run_backends
from splitfc.common.codecs import CODECS
from splitfc.common.settings import codec_settings

pytest.importorskip("av")


def _available(name: str) -> bool:
    from splitfc.common.codecs._pyav import pyav_has

    codec = CODECS[name]()
    return codec.unavailable_reason() is None and pyav_has(codec.decoder)


def test_backend_switch_is_seen_by_the_codecs_and_restored() -> None:
    before = codec_settings().ffmpeg_backend
    with ffmpeg_backend("subprocess"):
        assert codec_settings().ffmpeg_backend == "subprocess"
    with ffmpeg_backend("pyav"):
        assert codec_settings().ffmpeg_backend == "pyav"
    assert codec_settings().ffmpeg_backend == before


def test_each_backend_runs_its_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _available("hevc"):
        pytest.skip("hevc with PyAV not available")
    import splitfc.common.codecs._external as external
    import splitfc.common.codecs._ffmpeg as ffmpeg

    calls: list[tuple[str, str]] = []  # (backend in force, what ran)
    run, decode = ffmpeg.run_program, ffmpeg.pyav_decode_luma

    def counting_run(*a: object, **k: object) -> bytes:
        calls.append((codec_settings().ffmpeg_backend, "process"))
        return run(*a, **k)

    def counting_decode(*a: object, **k: object) -> object:
        calls.append((codec_settings().ffmpeg_backend, "pyav decode"))
        return decode(*a, **k)

    monkeypatch.setattr(ffmpeg, "run_program", counting_run)
    monkeypatch.setattr(ffmpeg, "pyav_decode_luma", counting_decode)
    assert external.run_program is run
    result = run_backends(["hevc"], [37], "dinov2-cls", (9, 128), repeats=1, rounds=1)
    (point,) = result["points"]
    # Under subprocess every encode and decode is an ffmpeg process; under pyav none is.
    assert ("subprocess", "process") in calls and ("pyav", "pyav decode") in calls
    assert set(calls) == {("subprocess", "process"), ("pyav", "pyav decode")}
    assert point["same_reconstruction"] and point["encode_in_process"]
    assert point["subprocess_decode_ms"] > 0 and point["pyav_decode_ms"] > 0
    assert point["decode_saved_ms"] == pytest.approx(point["subprocess_decode_ms"] - point["pyav_decode_ms"])


def test_vvenc_encode_is_not_claimed_in_process() -> None:
    assert not pyav_encodes("vvenc")
    assert not pyav_encodes("raw")


def test_cli_writes_json_and_refuses_bad_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-ffmpeg-backends", "--shape", "65xa", "-o", str(tmp_path / "x.json")]) == 2
    assert "--shape" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["bench-ffmpeg-backends", "--codecs", "raw", "--repeats", "1", "--rounds", "1", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["points"] == [] and "not an ffmpeg codec" in result["skipped"]["raw"]
    assert result["process_start_ms"] is None or result["process_start_ms"] > 0
