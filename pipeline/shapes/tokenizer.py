"""A word-level CLIP tokenizer for the captions' vocabulary.

Every caption word is one token, so a 2-layer text encoder need not learn to spell. It is an
ordinary `CLIPTokenizer` (vocab.json + merges.txt): each known word gets a chain of BPE merges
that builds it whole; any other text falls back to single characters, as CLIP's does.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.tiny_models import _byte_to_unicode

# The captions are at most 8 words; 16 positions leave room for the start and end tokens and
# for short extra words, and keep the cross-attention context small (CLIP's is 77).
MAX_TOKENS = 16
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _apply_merges(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """What CLIP's BPE makes of one word given the merges so far (lowest rank first)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks) + 1), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, _ = min(pairs)
        if rank > len(ranks):
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and ranks.get((parts[i], parts[i + 1])) == rank:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges that make each word one token. A merge added for a later word has the lowest
    rank of all, so it can never change how an earlier (already whole) word tokenizes."""
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _apply_merges(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
    return sorted(ranks, key=ranks.get)


def write_word_tokenizer(out_dir: str | Path, words: list[str], max_tokens: int = MAX_TOKENS) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(_SPECIAL)}
    for symbol in _byte_to_unicode().values():
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_tokens,
        "bos_token": _SPECIAL[0],
        "eos_token": _SPECIAL[1],
        "unk_token": _SPECIAL[1],
        "pad_token": _SPECIAL[1],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out
