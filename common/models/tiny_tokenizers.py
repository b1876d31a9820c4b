"""Tokenizers for the ``tiny`` preset, trained offline with the `tokenizers` library.

The training text is the standard library's ``pydoc_data.topics`` (always
installed, English). Training is deterministic (same vocabulary in every
process and on every machine), takes well under a second, and is cached per
process.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

LLAMA_VOCAB = 2000
CLIP_VOCAB = 1000
T5_VOCAB = 1000
LLAMA_BOS = "<|begin_of_text|>"
LLAMA_EOS = "<|end_of_text|>"


@lru_cache(maxsize=1)
def corpus_texts() -> tuple[str, ...]:
    """Offline English training text: the pydoc topics, in a fixed order."""
    import pydoc_data.topics as topics

    return tuple(topics.topics[k] for k in sorted(topics.topics))


def _short_corpus(chars: int = 60_000) -> list[str]:
    """The first ``chars`` characters of the corpus (Unigram training is slower)."""
    out: list[str] = []
    total = 0
    for text in corpus_texts():
        out.append(text)
        total += len(text)
        if total >= chars:
            break
    return out


@lru_cache(maxsize=1)
def _llama_backend() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_VOCAB,
        special_tokens=[LLAMA_BOS, LLAMA_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer)
    return tok


def llama_tokenizer():  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer in the style of Llama 3 (BOS prepended)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_llama_backend().to_str())
    bos_id = backend.token_to_id(LLAMA_BOS)
    backend.post_processor = TemplateProcessing(
        single=f"{LLAMA_BOS} $A", pair=f"{LLAMA_BOS} $A $B", special_tokens=[(LLAMA_BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS, pad_token=LLAMA_EOS
    )


@lru_cache(maxsize=1)
def _clip_vocab_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=CLIP_VOCAB,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def clip_tokenizer():  # -> CLIPTokenizer
    """A lower-case BPE tokenizer with CLIP's ``</w>`` word suffix."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


@lru_cache(maxsize=1)
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=T5_VOCAB,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(_short_corpus(), trainer)
    import json

    return tuple((piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"])


def t5_tokenizer():  # -> T5Tokenizer
    """A Unigram (sentencepiece-style) tokenizer like T5's, no extra ids."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(_t5_vocab()), extra_ids=0)
