"""Tokenizers for the ``tiny`` preset, trained offline with the `tokenizers` library.

The training text is the standard library's ``pydoc_data.topics`` (always
installed, English). The vocabularies are canonicalised after training (`canonical_bpe_vocab`, rounded
and sorted Unigram scores: the trainers number tokens in hash-map order and sum in varying order), so they
are the same in every
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
    return canonical_bpe_vocab(dict(model["vocab"]), merges, 2), merges


def canonical_bpe_vocab(vocab: dict[str, int], merges: list[tuple[str, str]], specials: int) -> dict[str, int]:
    """Token ids that do not depend on the process: the trainer numbers its initial alphabet in hash-map
    order (a different order in every process, so a tiny model's embeddings would meet other tokens);
    the token set and the merges are deterministic. Ids: the ``specials`` first (in their order), then
    the alphabet sorted, then each merge's result in merge order."""
    by_id = sorted(vocab, key=vocab.__getitem__)
    merged = list(dict.fromkeys(a + b for a, b in merges))
    merged_set = set(merged)
    alphabet = sorted(t for t in by_id[specials:] if t not in merged_set)
    order = [*by_id[:specials], *alphabet, *merged]
    if sorted(order) != sorted(vocab):
        raise ValueError("BPE vocabulary is not its specials, alphabet and merges")
    return {token: i for i, token in enumerate(order)}


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

    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    # The Unigram trainer's scores differ in the last bits between processes (its EM sums in another
    # order) and the rare characters it appends get scores 1e-4 apart in hash-map order. Canonical form:
    # scores rounded to 1e-6 (the same set in every process), cut into clusters where sorted neighbours are
    # under 1e-3 apart (the cut depends on that set only); within a cluster the pieces are ordered by text
    # and take its scores in descending order. Every process builds one vocabulary.
    specials, pieces = vocab[:3], vocab[3:]
    pieces = [(p, round(score, 6)) for p, score in pieces]
    ranked = sorted(pieces, key=lambda ps: -ps[1])
    clusters: list[list[tuple[str, float]]] = []
    for piece in ranked:
        if clusters and clusters[-1][-1][1] - piece[1] < 1e-3:
            clusters[-1].append(piece)
        else:
            clusters.append([piece])
    canonical = [
        (p, score)
        for cluster in clusters
        for (p, _), score in zip(sorted(cluster), sorted((sc for _, sc in cluster), reverse=True), strict=True)
    ]
    return tuple(specials + canonical)


def t5_tokenizer():  # -> T5Tokenizer
    """A Unigram (sentencepiece-style) tokenizer like T5's, no extra ids."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(_t5_vocab()), extra_ids=0)
