"""The layering of README "Architecture", checked by import-linter (contracts in pyproject.toml).

import-linter finds a package's modules under its folder; here ``splitfc.common``,
``splitfc.edge`` and ``splitfc.cloud`` live in top-level folders (package-dir), so the
test lays the sources out as installed (``splitfc/common``, ...) in a temporary
folder and runs ``lint-imports`` against that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _installed_layout(dst: Path) -> Path:
    """Copy the Python sources into ``dst/splitfc`` laid out as they install; return ``dst``."""
    mapping = {"splitfc": "splitfc", "common": "splitfc/common", "edge": "splitfc/edge", "cloud": "splitfc/cloud"}
    for folder, target in mapping.items():
        src = ROOT / folder
        for f in src.rglob("*.py"):
            rel = f.relative_to(src)
            if folder == "splitfc" and rel.parts[0] in ("common", "edge", "cloud"):
                continue
            out = dst / target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
    return dst


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return _installed_layout(tmp_path_factory.mktemp("layout"))


def test_import_contracts_hold(tree: Path) -> None:
    proc = _lint(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("splitfc/common/specs.py", "import splitfc.cloud.engine", "the shared core imports neither side"),
        ("splitfc/edge/client.py", "import splitfc.cloud.errors", "edge and cloud never import each other"),
        ("splitfc/cloud/engine.py", "import grpc", "the cloud engine knows nothing of the transport"),
        ("splitfc/cloud/servicer.py", "import splitfc.common.codecs.raw", "knows nothing of codec internals"),
    ],
)
def test_a_violation_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    tree = _installed_layout(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # injected\n")
    proc = _lint(tree)
    assert proc.returncode != 0
    assert f"{contract}" in proc.stdout and "BROKEN" in proc.stdout
