"""``splitfc splits``: every registered split with its Table 1/2/4 facts."""

from __future__ import annotations

import json

from splitfc.cli import main
from splitfc.common.specs import SPLITS, TruncationColumn


def test_splits_json_lists_every_split_with_its_ranges(capsys) -> None:
    assert main(["splits", "--json"]) == 0
    rows = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(SPLITS)
    for split_id, spec in SPLITS.items():
        r = rows[split_id]
        assert (r["family"], r["task"], r["head"], r["packing"]) == (spec.family, spec.task, spec.head,
                                                                     spec.packing.value)
        assert [tuple(x) for x in r["original_range"]] == list(spec.original_range)
        assert [tuple(x) for x in r["truncation"]["vtm"]] == list(spec.ranges(TruncationColumn.VTM))
    # paper Table 4, Cls row: original range [-542.30, 94.14], VTM column [-20, 20]
    assert rows["dinov2-cls"]["original_range"] == [[-542.3, 94.14]]
    assert rows["dinov2-cls"]["truncation"]["vtm"] == [[-20.0, 20.0]]
    assert len(rows["dinov2-dpt"]["truncation"]["vtm"]) == 4  # one range per layer


def test_splits_text(capsys) -> None:
    assert main(["splits"]) == 0
    out = capsys.readouterr().out
    for split_id in SPLITS:
        assert out.count(split_id) == 1
