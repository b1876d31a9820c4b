"""The distribution lists every package folder, so a non-editable install is complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> tuple[set[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_package_folder_is_listed() -> None:
    packages, package_dir = _declared()
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if any(part.startswith(".") for part in rel.parts):
                continue
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    missing = sorted(found - packages)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"splitfc": "splitfc.cli:main"}
