# Byte-level BPE (GPT-2 style) for Tessera's trained model: pre-tokenizer, trainer and encoder.
# Pure Python (no numpy) so it runs on the development machine; llama.cpp must tokenize identically.
"""Byte-level BPE tokenizer.

The pre-tokenizer implements the split regex that llama.cpp uses for tokenizer.ggml.pre = "qwen2"
(src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2):

    (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}
    | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+

Python's `re` has no \\p{L}/\\p{N}, so this module accepts ASCII text only and spells the classes
out for ASCII (letters [A-Za-z], numbers [0-9], whitespace [ \\t\\n\\v\\f\\r]). On ASCII input that is
exactly the regex above; non-ASCII text raises instead of silently tokenizing differently.
"""

import collections
import re

# Unicode classes restricted to ASCII (see module docstring).
_L = "A-Za-z"
_N = "0-9"
_S = " \\t\\n\\x0b\\x0c\\r"
PRETOKENIZE_PATTERN = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    f"|[^\\r\\n{_L}{_N}]?[{_L}]+"
    f"|[{_N}]"
    f"| ?[^{_S}{_L}{_N}]+[\\r\\n]*"
    f"|[{_S}]*[\\r\\n]+"
    f"|[{_S}]+(?![^{_S}])"
    f"|[{_S}]+"
)
_PRETOKENIZE_RE = re.compile(PRETOKENIZE_PATTERN)

# The llama.cpp pre-tokenizer name whose regex PRETOKENIZE_PATTERN reproduces.
LLAMA_CPP_PRE = "qwen2"


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table (256 entries).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100.. in byte order, so
    every token is a printable string with no spaces or control characters.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_UNICODE = bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def check_ascii(text, what="text"):
    """Raise ValueError naming the first non-ASCII character: the ASCII regex would be wrong there."""
    for i, ch in enumerate(text):
        if ord(ch) > 127:
            raise ValueError(f"{what}: non-ASCII character {ch!r} at offset {i}; "
                             "the pre-tokenizer regex is only exact for ASCII")


def pretokenize(text):
    """Split text into pre-tokens exactly as llama.cpp's qwen2 pre-tokenizer does (ASCII text)."""
    check_ascii(text)
    return _PRETOKENIZE_RE.findall(text)


def to_symbols(piece):
    """A pre-token as a tuple of byte-level unicode symbols (one per UTF-8 byte)."""
    return tuple(BYTE_TO_UNICODE[b] for b in piece.encode("utf-8"))


def train(texts, vocab_size, special_tokens, log=None):
    """Learn merges on `texts` until the vocabulary (256 bytes + merges + specials) has vocab_size tokens.

    Pair counts are kept incrementally over the unique pre-tokenized words: a merge only touches the
    words that contain its pair. Ties between equally frequent pairs are broken by the pair's symbols
    (largest first), so training is deterministic.
    Returns (tokens, merges): tokens is the id-ordered list of token strings, merges a list of
    (left, right) pairs in rank order.
    """
    word_counts = collections.Counter()
    for text in texts:
        word_counts.update(pretokenize(text))
    words = [list(to_symbols(w)) for w in word_counts]
    counts = list(word_counts.values())

    tokens = [BYTE_TO_UNICODE[b] for b in range(256)]
    known = set(tokens)
    n_target = vocab_size - len(special_tokens)
    if n_target <= 256:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges")

    pair_counts = collections.defaultdict(int)
    pair_where = collections.defaultdict(set)
    for wi, (w, c) in enumerate(zip(words, counts)):
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += c
            pair_where[(a, b)].add(wi)

    merges = []
    while len(tokens) < n_target:
        if not pair_counts:
            raise ValueError(f"corpus exhausted after {len(merges)} merges; vocab_size too large")
        best = max(pair_counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if pair_counts[best] < 2:
            raise ValueError(f"no pair occurs twice after {len(merges)} merges; vocab_size too large")
        a, b = best
        merged = a + b
        merges.append(best)
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        for wi in list(pair_where[best]):
            w = words[wi]
            c = counts[wi]
            # Remove this word's old pairs, merge, add its new pairs.
            for p in zip(w, w[1:]):
                pair_counts[p] -= c
                if pair_counts[p] == 0:
                    del pair_counts[p]
                pair_where[p].discard(wi)
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += c
                pair_where[p].add(wi)
        pair_where.pop(best, None)
        if log is not None and len(merges) % 500 == 0:
            log(f"bpe: {len(merges)} merges, vocab {len(tokens)}, last {merged!r}")
    tokens.extend(special_tokens)
    return tokens, merges


class Encoder:
    """Encodes text with a trained vocabulary; merges are applied lowest rank first, as llama.cpp does."""

    def __init__(self, tokens, merges):
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        if len(self.token_to_id) != len(tokens):
            raise ValueError("duplicate token strings in vocabulary")
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.cache = {}

    def encode_word(self, piece):
        ids = self.cache.get(piece)
        if ids is not None:
            return ids
        w = list(to_symbols(piece))
        while len(w) > 1:
            best_rank = None
            best_i = -1
            for i in range(len(w) - 1):
                r = self.ranks.get((w[i], w[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_rank is None:
                break
            a, b = w[best_i], w[best_i + 1]
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            w = out
        ids = [self.token_to_id[s] for s in w]
        self.cache[piece] = ids
        return ids

    def encode(self, text):
        ids = []
        for piece in pretokenize(text):
            ids.extend(self.encode_word(piece))
        return ids
