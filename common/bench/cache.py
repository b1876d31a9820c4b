"""The benchmark cache: one JSON record per finished (split, codec, rate, sample) point.

A record lives at ``cache/<split>/<codec>/<rate>/<sample>-<key16>.json``; the key
hashes everything the result depends on (feature file hash, sample, preset, schema
version and the identities of `identity`: sources, settings, external programs,
checkpoints), so a changed input is recomputed and an unchanged one is never.
Writes are atomic (temporary file + ``os.replace``), so a run killed mid-write
leaves no half record; task outputs that do not fit JSON (masks, images) go in a
sibling ``.npz`` written before the JSON that marks the point done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 2
"""2: the key covers the whole coding and tail paths (`identity`); times come from a pass
without the memory sampler."""
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def point_key(fields: Mapping[str, Any]) -> str:
    """Stable hex key of a point's identity (JSON with sorted keys, SHA-256)."""
    payload = json.dumps({"schema": SCHEMA_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def safe_name(text: str) -> str:
    """A file-name-safe rendering of an id."""
    return _SAFE.sub("_", text) or "_"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultCache:
    """Finished points under ``root`` (normally ``RESULTS_DIR/cache``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, split: str, codec: str, rate: int | str, sample: str, key: str) -> Path:
        return self.root / safe_name(split) / safe_name(codec) / safe_name(str(rate)) / (
            f"{safe_name(sample)}-{key[:16]}.json"
        )

    def get(self, split: str, codec: str, rate: int | str, sample: str, key: str) -> dict[str, Any] | None:
        """The cached record, or None if absent, unreadable or for another key."""
        p = self.path(split, codec, rate, sample, key)
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        npz = record.get("outputs_file")
        if npz and not (p.parent / npz).exists():
            return None
        return record

    def put(self, record: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> Path:
        """Store a record (it must carry split, codec, rate, sample and key)."""
        p = self.path(record["split"], record["codec"], record["rate"], record["sample"], record["key"])
        record = dict(record)
        if arrays:
            npz = p.with_suffix(".npz")
            import io

            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            atomic_write_bytes(npz, buf.getvalue())
            record["outputs_file"] = npz.name
        atomic_write_bytes(p, json.dumps(record, indent=1, sort_keys=True).encode())
        return p

    def load_arrays(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The arrays stored with a record (empty when none)."""
        name = record.get("outputs_file")
        if not name:
            return {}
        p = self.path(record["split"], record["codec"], record["rate"], record["sample"], record["key"])
        with np.load(p.parent / name, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def count(self) -> int:
        """Number of finished point records."""
        return sum(1 for _ in self.root.rglob("*.json")) if self.root.exists() else 0
