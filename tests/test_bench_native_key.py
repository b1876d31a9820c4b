"""The bench cache key of ``native`` points covers its fitted transforms (settings and artefact contents)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitfc.common.bench.identity import native_transforms_identity, point_key_for
from splitfc.common.codecs.native_transform import SHIPPED_DIR
from splitfc.common.settings import native_transform_settings


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SPLITFC_NATIVE_TRANSFORM", raising=False)
    monkeypatch.delenv("SPLITFC_NATIVE_TRANSFORM_DIR", raising=False)
    native_transform_settings.cache_clear()
    yield
    native_transform_settings.cache_clear()


def _key(codec: str = "native") -> str:
    return point_key_for("dinov2-cls", codec, 32, "s0", "ab" * 32, "tiny")


def _with_env(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    native_transform_settings.cache_clear()
    return _key()


def test_forcing_a_transform_or_none_changes_native_keys_only(monkeypatch: pytest.MonkeyPatch) -> None:
    default, hevc = _key(), _key("hevc")
    assert _key() == default  # stable
    shipped = sorted(SHIPPED_DIR.glob("*.safetensors"))
    assert shipped, "the tiny preset's transforms are shipped"
    none = _with_env(monkeypatch, "SPLITFC_NATIVE_TRANSFORM", "none")
    other = _with_env(monkeypatch, "SPLITFC_NATIVE_TRANSFORM", str(shipped[-1]))
    assert len({default, none, other}) == 3
    assert _key("hevc") == hevc  # other codecs' points are not recomputed


def test_an_artefact_added_or_changed_in_the_user_folder_changes_the_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = _with_env(monkeypatch, "SPLITFC_NATIVE_TRANSFORM_DIR", str(tmp_path))
    src = sorted(SHIPPED_DIR.glob("*.safetensors"))[0]
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    native_transform_settings.cache_clear()
    added = _key()
    assert added != empty
    ident = native_transforms_identity()
    assert [0, src.name] == ident["artefacts"][0][:2]
    copy.write_bytes(copy.read_bytes()[:-1] + b"\0")  # same name, other content
    native_transform_settings.cache_clear()
    assert _key() not in (empty, added)
