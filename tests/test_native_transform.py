"""The native codec's fitted channel transform (common/codecs/native_transform.py) and ``splitfc fit-codec``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from splitfc.cli import main
from splitfc.common.codecs import native_transform as nt
from splitfc.common.errors import BitstreamError
from splitfc.common.settings import native_transform_settings
from splitfc.common.specs import get_split


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user settings leak in or out; caches start empty."""
    monkeypatch.delenv("SPLITFC_NATIVE_TRANSFORM_DIR", raising=False)
    monkeypatch.delenv("SPLITFC_NATIVE_TRANSFORM", raising=False)
    native_transform_settings.cache_clear()
    nt.clear_cache()
    yield
    native_transform_settings.cache_clear()
    nt.clear_cache()


def _use(monkeypatch: pytest.MonkeyPatch, **env: str | Path) -> None:
    for key, value in env.items():
        monkeypatch.setenv(f"SPLITFC_{key.upper()}", str(value))
    native_transform_settings.cache_clear()
    nt.clear_cache()


def _correlated(rng: np.random.Generator, n: int = 40_000, channels: int = 6):
    """Observations with a known basis (rows), variances 16, 8, ... and means of very different sizes."""
    q, _ = np.linalg.qr(rng.normal(size=(channels, channels)))
    basis = q.T
    variances = 16.0 / 2.0 ** np.arange(channels)
    mean = np.array([500.0, -3.0, 0.0, 40.0, 1e-3, -250.0])[:channels]
    x = (rng.normal(size=(n, channels)) * np.sqrt(variances)) @ basis + mean
    return x, mean, basis, variances


def _save(tmp_path: Path, split: str = "dinov2-cls", channels: int = 6, seed: int = 0) -> nt.NativeTransform:
    x, *_ = _correlated(np.random.default_rng(seed), 2000, channels)
    mean, basis, variances = nt.fit_channel_transform(x)
    return nt.save_native_transform(tmp_path, split, mean, basis, variances, {"preset": "test"})


def test_fit_recovers_known_basis_up_to_sign_and_means() -> None:
    x, mean, basis, variances = _correlated(np.random.default_rng(0))
    got_mean, got_basis, got_var = nt.fit_channel_transform(x)
    np.testing.assert_allclose(got_mean, mean, atol=0.05)
    np.testing.assert_allclose(got_var, variances, rtol=0.05)
    # row k is the k-th direction of decreasing variance: |<got_k, true_k>| ~ 1
    np.testing.assert_allclose(np.abs(np.sum(got_basis * basis, axis=1)), 1.0, atol=2e-3)
    np.testing.assert_allclose(got_basis @ got_basis.T, np.eye(6), atol=1e-12)
    # sign rule: the largest-magnitude entry of each row is positive
    assert (got_basis[np.arange(6), np.abs(got_basis).argmax(axis=1)] > 0).all()


def test_streamed_moments_equal_one_batch_fit() -> None:
    x, *_ = _correlated(np.random.default_rng(1), 3000)
    moments = nt.ChannelMoments(6)
    for chunk in np.array_split(x, 7):
        moments.add(chunk)
    streamed = nt.fit_channel_transform(moments)
    whole = nt.fit_channel_transform(x)
    for a, b in zip(streamed, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_observations_are_channel_vectors_of_every_layout() -> None:
    dpt = get_split("dinov2-dpt")  # views x layers x tokens x channels
    x = np.arange(2 * 4 * 3 * 5, dtype=np.float32).reshape(2, 4, 3, 5)
    obs = nt.feature_observations(x, dpt)
    assert obs.shape == (24, 5) and obs.dtype == np.float64
    np.testing.assert_array_equal(obs[7], x[0, 2, 1])
    sd3 = get_split("sd3-tti")  # channels x height x width
    y = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    obs = nt.feature_observations(y, sd3)
    assert obs.shape == (6, 4)
    np.testing.assert_array_equal(obs[4], y[:, 1, 1])


def test_compaction_and_coding_gain() -> None:
    v = np.array([8.0, 4.0, 2.0, 2.0])
    assert nt.energy_compaction(v, (1, 2, 4)) == {1: 0.5, 2: 0.75, 4: 1.0}
    assert nt.coding_gain(v) == pytest.approx(4.0 / 128.0 ** 0.25)  # arithmetic 4, geometric 128^(1/4)
    assert nt.coding_gain(np.ones(5)) == pytest.approx(1.0)


def test_artefact_round_trip_id_is_sha256_prefix_and_same_fit_same_id(tmp_path: Path) -> None:
    t = _save(tmp_path)
    assert t.path is not None and t.path.name == f"dinov2-cls.c6.{t.hex_id}.safetensors"
    assert t.transform_id == hashlib.sha256(t.path.read_bytes()).digest()[:8] and len(t.transform_id) == 8
    x, *_ = _correlated(np.random.default_rng(0), 2000)
    mean, basis, variances = nt.fit_channel_transform(x)
    np.testing.assert_array_equal(t.mean, mean)
    np.testing.assert_array_equal(t.basis, basis.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(t.variances, variances)
    assert t.mean.dtype == t.basis.dtype == t.variances.dtype == np.float64
    assert (t.split_id, t.channels, t.metadata["preset"]) == ("dinov2-cls", 6, "test")
    again = _save(tmp_path / "again")
    assert again.transform_id == t.transform_id  # deterministic bytes (one sorted JSON metadata entry)
    nt.clear_cache()
    assert nt.load_native_transform(t.path) == t


def test_tampered_or_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    t = _save(tmp_path)
    data = bytearray(t.path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes
    t.path.write_bytes(bytes(data))
    nt.clear_cache()
    with pytest.raises(nt.TransformFileError, match=r"corrupt or was edited") as info:
        nt.load_native_transform(t.path)
    assert str(t.path) in str(info.value) and "\n" not in str(info.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not")
    with pytest.raises(nt.TransformFileError, match=r"junk\.safetensors"):
        nt.load_native_transform(junk)


def test_a_non_orthonormal_basis_is_refused(tmp_path: Path) -> None:
    mean, basis, variances = np.zeros(3), np.eye(3) * 1.1, np.array([3.0, 2.0, 1.0])
    with pytest.raises(nt.TransformFileError, match="not orthonormal"):
        nt.save_native_transform(tmp_path, "dinov2-cls", mean, basis, variances)


def test_lookup_user_folder_before_shipped_and_by_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _save(tmp_path / "user")
    assert nt.find_native_transform("dinov2-cls", 6) is None  # not in the shipped folder
    _use(monkeypatch, native_transform_dir=tmp_path / "user")
    assert nt.transform_dirs() == [tmp_path / "user", nt.SHIPPED_DIR]
    found = nt.find_native_transform("dinov2-cls", 6)
    assert found == t and found.path == t.path
    assert nt.find_native_transform("dinov2-cls", 7) is None
    assert nt.find_native_transform("dinov2-seg", 6) is None
    nt.clear_cache()
    assert nt.get_native_transform(t.transform_id) == t
    assert nt.get_native_transform(t.transform_id) is nt.get_native_transform(t.transform_id)  # cached


def test_unknown_id_error_names_the_id_and_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, native_transform_dir=tmp_path)
    with pytest.raises(BitstreamError) as info:
        nt.get_native_transform(bytes.fromhex("00112233445566ff"))
    message = str(info.value)
    assert isinstance(info.value, nt.UnknownTransformError)
    assert "00112233445566ff" in message and "SPLITFC_NATIVE_TRANSFORM_DIR" in message
    assert "splitfc fit-codec --codec native" in message and str(tmp_path) in message
    with pytest.raises(nt.UnknownTransformError, match="3 bytes"):
        nt.get_native_transform(b"abc")


def test_force_override_id_path_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = _save(tmp_path / "a", "dinov2-cls", seed=0)
    seg = _save(tmp_path / "a", "dinov2-seg", seed=1)
    _use(monkeypatch, native_transform_dir=tmp_path / "a")
    assert nt.find_native_transform("dinov2-seg", 6) == seg
    # an id: fitted on Cls, applied to Seg (paper Table 6)
    _use(monkeypatch, native_transform_dir=tmp_path / "a", native_transform=cls.hex_id)
    assert nt.find_native_transform("dinov2-seg", 6) == cls
    assert nt.find_native_transform("dinov2-seg", 6, honour_override=False) == seg
    with pytest.raises(nt.SplitfcError, match=r"forces transform .* 7 channels"):
        nt.find_native_transform("dinov2-seg", 7)
    # a path outside every searched folder: found by id too (the decoder's side)
    other = _save(tmp_path / "elsewhere", "llama3-csr", seed=2)
    _use(monkeypatch, native_transform=other.path)
    assert nt.find_native_transform("dinov2-dpt", 6) == other
    assert nt.get_native_transform(other.transform_id) == other
    # none: no fitted transform for any split
    _use(monkeypatch, native_transform_dir=tmp_path / "a", native_transform="none")
    assert nt.find_native_transform("dinov2-cls", 6) is None
    # an id or path that is not there
    _use(monkeypatch, native_transform="0123456789abcdef")
    with pytest.raises(nt.UnknownTransformError, match="0123456789abcdef"):
        nt.find_native_transform("dinov2-cls", 6)
    _use(monkeypatch, native_transform=tmp_path / "missing.safetensors")
    with pytest.raises(nt.UnknownTransformError, match="neither 'none'"):
        nt.find_native_transform("dinov2-cls", 6)


def test_shipped_artefacts_load_and_match_their_split() -> None:
    shipped = sorted(nt.SHIPPED_DIR.glob("*.safetensors"))
    for path in shipped:
        t = nt.load_native_transform(path)
        assert nt.find_native_transform(t.split_id, t.channels) == t
        assert nt.get_native_transform(t.transform_id) == t
        assert t.metadata["samples"] <= nt.MAX_TRAINING_SAMPLES


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["fit-codec", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("argv", "expect"), [
    (("--split", "dinov2-cls", "--samples", "101"), "--samples must be 1-100"),
    (("--split", "dinov2-cls", "--samples", "0"), "--samples must be 1-100"),
    (("--split", "dinov2-cls", "--codec", "vtm"), "fits only native"),
    (("--split", "no-such-split"), "unknown split"),
    (("--split", "dinov2-cls", "--preset", "huge"), "unknown preset"),
    (("--split", "dinov2-cls", "--held-back", "-1"), "--held-back must be >= 0"),
])
def test_cli_bad_arguments_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv, expect: str) -> None:
    code, err = _cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("splitfc: error: ") and expect in err[0]


def test_cli_fits_extracted_features_and_the_codec_finds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    features = tmp_path / "features"
    features.mkdir()
    for i in range(3):
        x, *_ = _correlated(rng, 65 * 1, 6)
        np.save(features / f"s{i}.npy", x.astype(np.float32))
    out = tmp_path / "fitted"
    code = main(["fit-codec", "--split", "dinov2-cls", "--features", str(features), "-o", str(out),
                 "--json", str(tmp_path / "fit.json")])
    printed = capsys.readouterr().out
    assert code == 0
    (path,) = out.glob("*.safetensors")
    t = nt.load_native_transform(path)
    assert f"native transform {t.hex_id}" in printed and str(path) in printed
    assert t.metadata["samples"] == 3 and t.metadata["observations"] == 195
    _use(monkeypatch, native_transform_dir=out)
    assert nt.find_native_transform("dinov2-cls", 6) == t
    code, err = _cli(capsys, "--split", "dinov2-seg", "--features", str(features))
    assert code == 2 and len(err) == 1 and "expects a 3-d tensor" in err[0]


def test_cli_measure_a_transform_fitted_on_another_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = nt.find_native_transform("dinov2-cls", 128)
    if shipped is None:
        pytest.skip("no shipped tiny dinov2-cls transform")
    code, err = _cli(capsys, "--split", "dinov2-seg", "--measure", shipped.hex_id)
    assert code == 2 and len(err) == 1 and "--measure needs --held-back" in err[0]
    out = tmp_path / "m.json"
    assert main(["fit-codec", "--split", "dinov2-seg", "--measure", shipped.hex_id, "--held-back", "2",
                 "--json", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())
    assert rows["fitted_on"] == "dinov2-cls" and rows["split"] == "dinov2-seg"
    fractions = list(rows["held_back"]["compaction"].values())
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == pytest.approx(1.0)
    assert rows["held_back"]["observations"] == 2 * 2 * 65  # 2 samples x 2 views x 65 tokens
    assert not list(tmp_path.glob("*.safetensors"))  # nothing fitted or written


def test_cli_fits_on_training_samples_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import splitfc.common.models as models

    asked: list[tuple[str, int, str, bool]] = []
    real = models.preset_samples

    def recording(split_id: str, n: int, preset: str = "tiny", train: bool = False):
        asked.append((split_id, n, preset, train))
        return real(split_id, n, preset, train=train)

    monkeypatch.setattr(models, "preset_samples", recording)
    out = tmp_path / "fit.safetensors"
    assert main(["fit-codec", "--split", "llama3-csr", "--samples", "3", "-o", str(out)]) == 0
    assert asked == [("llama3-csr", 3, "tiny", True)]
    t = nt.load_native_transform(out)
    assert (t.split_id, t.channels, t.metadata["samples"], t.metadata["preset"]) == ("llama3-csr", 128, 3, "tiny")
    train_ids = {s.id for s in real("llama3-csr", 3, "tiny", train=True)}
    assert not train_ids & {s.id for s in real("llama3-csr", 20, "tiny", train=False)}
    assert f"native transform {t.hex_id}" in capsys.readouterr().out


def test_get_by_id_skips_a_damaged_copy_for_a_good_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _save(tmp_path / "good")
    user = tmp_path / "user"
    user.mkdir()
    damaged = user / good.path.name
    damaged.write_bytes(good.path.read_bytes()[:-1] + b"\x00")
    monkeypatch.setattr(nt, "SHIPPED_DIR", tmp_path / "empty")
    _use(monkeypatch, native_transform_dir=user)
    with pytest.raises(nt.TransformFileError, match="corrupt or was edited"):
        nt.get_native_transform(good.transform_id)  # the only copy searched is damaged
    monkeypatch.setattr(nt, "SHIPPED_DIR", tmp_path / "good")  # a good copy in the next folder
    nt.clear_cache()
    assert nt.get_native_transform(good.transform_id) == good
    with pytest.raises(nt.TransformFileError, match="corrupt or was edited"):
        nt.find_native_transform("dinov2-cls", 6)  # by name the user's file comes first: refused, no fallback
