"""The pretrained-model resolver: folder wins over cache wins over converter; the converter runs once."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitfc.common.models import pretrained
from splitfc.common.settings import model_settings

HUB_ID = "splitfc-test/resolver-model"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITFC_CONVERTED_DIR", str(tmp_path / "converted"))
    monkeypatch.delenv("SPLITFC_MODEL_DIR", raising=False)
    monkeypatch.delenv("SPLITFC_HF_DOWNLOADS", raising=False)
    model_settings.cache_clear()
    calls: list[Path] = []

    def convert(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    pretrained.CONVERTERS.pop(HUB_ID, None)
    pretrained.register_converter(HUB_ID, convert, source="test")
    yield tmp_path, calls
    pretrained.CONVERTERS.pop(HUB_ID, None)
    model_settings.cache_clear()


def test_converter_runs_once(env, monkeypatch):
    tmp_path, calls = env
    monkeypatch.setattr(pretrained, "_cached_snapshot", lambda hub_id: None)
    first = pretrained.resolve_pretrained(HUB_ID)
    second = pretrained.resolve_pretrained(HUB_ID)
    assert first == second == tmp_path / "converted" / "splitfc-test--resolver-model"
    assert len(calls) == 1 and (first / "config.json").is_file()
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name]


def test_order_folder_then_cache_then_converter(env, monkeypatch):
    tmp_path, calls = env
    cache = tmp_path / "hfcache"
    cache.mkdir()
    monkeypatch.setattr(pretrained, "_cached_snapshot", lambda hub_id: cache)
    assert pretrained.resolve_pretrained(HUB_ID) == cache
    local = tmp_path / "models" / "resolver-model"
    local.mkdir(parents=True)
    monkeypatch.setenv("SPLITFC_MODEL_DIR", str(tmp_path / "models"))
    model_settings.cache_clear()
    assert pretrained.resolve_pretrained(HUB_ID) == local
    assert pretrained.resolve_pretrained(HUB_ID, source=cache) == cache
    assert calls == []


def test_offline_never_downloads(env, monkeypatch):
    monkeypatch.setattr(pretrained, "_cached_snapshot", lambda hub_id: None)
    monkeypatch.setattr(pretrained, "_download", lambda hub_id: pytest.fail("tried the network"))
    pretrained.CONVERTERS.pop(HUB_ID)
    with pytest.raises(pretrained.ModelNotFoundError, match="no download"):
        pretrained.resolve_pretrained(HUB_ID)


def test_missing_package_names_the_extra(env, monkeypatch):
    monkeypatch.setattr(pretrained, "_cached_snapshot", lambda hub_id: None)
    pretrained.CONVERTERS.pop(HUB_ID)
    pretrained.register_converter(HUB_ID, lambda out: None, packages=("no_such_package_xyz",), source="test")
    with pytest.raises(pretrained.MissingExtraError, match=r"no_such_package_xyz.*pip install 'splitfc\[small\]'"):
        pretrained.resolve_pretrained(HUB_ID)
