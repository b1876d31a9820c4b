"""The tiny preset is the same model in every process: tokenizers trained offline and the features they
lead to (a tokenizer numbered in hash-map order made tiny SD3 features differ from run to run)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import hashlib, json
from splitfc.common.models import get_split_model, tiny_samples
from splitfc.common.models.tiny_tokenizers import _clip_vocab_merges, _llama_backend, _t5_vocab
def h(x):
    return hashlib.sha256(x if isinstance(x, bytes) else json.dumps(x).encode()).hexdigest()[:16]
out = {"clip": h(_clip_vocab_merges()[0]), "t5": h(_t5_vocab()), "llama": h(_llama_backend().to_str())}
for split in ("sd3-tti", "llama3-csr"):
    sample = tiny_samples(split, 1)[0]
    out[split] = h(get_split_model(split, "tiny").head(sample.inputs).tobytes())
print(json.dumps(out))
"""


def _run(hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env,
                          check=True)
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tiny_tokenizers_and_features_are_the_same_in_every_process() -> None:
    first, second = _run("0"), _run("12345")
    assert first == second
