"""Fuzzing the network-facing parsers: a small budget here, the large one through ``make fuzz``.

Every target accepts only a clean result or a `SplitfcError` (see ``fuzz_targets.py``).
"""

from __future__ import annotations

import pytest
from fuzz_targets import RPC_CODES, WEIGHTS, decode_outcome, main, mutate, run_target, seed_bitstreams, targets

SMALL = {
    "parse_random_bytes": 300, "request_messages": 100, "rpc_calls": 60, "validate_structured": 200, "raw_mutated": 300,
    "hyperprior_mutated": 40, "hevc_mutated": 8, "vvenc_mutated": 8,
    "native_mutated": 200,
}


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_target_small_budget(name: str) -> None:
    if name not in targets():
        pytest.skip(f"{name}: codec unavailable here")
    res = run_target(name, SMALL[name], seed=1)
    assert res["inputs"] == SMALL[name]
    rpc = {code.lower() for code in RPC_CODES}
    assert set(res["outcomes"]) <= {"parsed", "rejected", "valid", "decoded", "chunk", "empty", *rpc}


def test_seeds_decode_and_a_flipped_payload_byte_is_rejected() -> None:
    """The seeds are real bitstreams (they decode); a payload change without a CRC fix is refused."""
    for codec in ("raw", "hevc"):
        for data in seed_bitstreams(codec):
            assert decode_outcome(data) == "decoded"
            assert decode_outcome(mutate(data, [("flip", len(data) - 3, 0)])) == "rejected"


def test_mutate_operations() -> None:
    assert mutate(b"abcd", [("set", 1, ord("X"))]) == b"aXcd"
    assert mutate(b"abcd", [("flip", 0, 0)]) == b"`bcd"
    assert mutate(b"abcd", [("insert", 4, ord("e"))]) == b"abcde"
    assert mutate(b"abcd", [("delete", 5, 0)]) == b"acd"
    assert mutate(b"abcd", [("truncate", 2, 0)]) == b"ab"
    assert mutate(b"", [("flip", 3, 1)]) == b""


@pytest.mark.fuzz
def test_large_budget(tmp_path: pytest.TempPathFactory) -> None:
    """``pytest -m fuzz``: the ``make fuzz`` budget (100,000 inputs)."""
    assert main(["--budget", "100000"]) == 0
