#!/usr/bin/env python3
# Builds the training data of Tessera's KJV model: corpus from Debian's bible-kjv, fixed splits,
# the byte-level BPE vocabulary trained on the train split, and the token streams (uint16 files).
"""Prepare corpus, tokenizer and token streams.

Corpus: `bible -f gen1:1-rev22:21` (Debian package bible-kjv) prints one verse per line as
"<Book><chapter>:<verse> <text>". Verse references are stripped (they would make the model learn
book abbreviations and numbers instead of text); each chapter becomes one document: its verses, one
per line, each ending in "\\n".

Splits are fixed by chapter index i (0-based, canonical order, 1189 chapters):
  test  (held-out): i % 50 == 49     val: i % 50 == 24     train: the rest.

Token streams (<split>.bin): for every chapter of a split, its tokens followed by <|endoftext|>;
little-endian uint16. The text files kjv-<split>.txt join the chapters with a blank line in between;
test_text.bin is kjv-test.txt tokenized as one text (what llama-perplexity sees).
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402

VERSE_RE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def read_chapters(source):
    """List of (book, chapter, text) in canonical order from the `bible` program's output."""
    if source:
        with open(source, encoding="ascii") as f:
            raw = f.read()
    else:
        raw = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True,
                             text=True, encoding="ascii").stdout
    chapters = []
    key = None
    lines = []
    n_verses = 0
    for ln, line in enumerate(raw.splitlines(), 1):
        m = VERSE_RE.match(line)
        if not m:
            raise ValueError(f"corpus line {ln}: not '<Book><chapter>:<verse> <text>': {line[:60]!r}")
        book, chap, text = m.group(1), int(m.group(2)), m.group(4).strip()
        if (book, chap) != key:
            if key is not None:
                chapters.append((key[0], key[1], "".join(lines)))
            key, lines = (book, chap), []
        lines.append(text + "\n")
        n_verses += 1
    if key is not None:
        chapters.append((key[0], key[1], "".join(lines)))
    return chapters, n_verses


def split_of(i):
    if i % 50 == 49:
        return "test"
    if i % 50 == 24:
        return "val"
    return "train"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--source", help="saved output of `bible -f gen1:1-rev22:21` (default: run it)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    t0 = time.time()
    chapters, n_verses = read_chapters(args.source)
    print(f"corpus: {n_verses} verses, {len(chapters)} chapters, "
          f"{sum(len(c[2]) for c in chapters)} characters")
    splits = {"train": [], "val": [], "test": []}
    for i, ch in enumerate(chapters):
        splits[split_of(i)].append(ch)
    for name, chs in splits.items():
        with open(os.path.join(args.out, f"kjv-{name}.txt"), "w", encoding="ascii", newline="\n") as f:
            f.write("\n".join(c[2] for c in chs))
        print(f"split {name}: {len(chs)} chapters, {sum(len(c[2]) for c in chs)} characters")

    tokens, merges = bpe.train([c[2] for c in splits["train"]], args.vocab_size, [BOS, EOS], log=print)
    print(f"bpe: {len(merges)} merges, {len(tokens)} tokens ({time.time() - t0:.1f} s)")
    bos_id, eos_id = tokens.index(BOS), tokens.index(EOS)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump({"pre": bpe.LLAMA_CPP_PRE, "pattern": bpe.PRETOKENIZE_PATTERN,
                   "bos_id": bos_id, "eos_id": eos_id, "special_ids": [bos_id, eos_id],
                   "tokens": tokens, "merges": [f"{a} {b}" for a, b in merges]}, f, ensure_ascii=False)

    enc = bpe.Encoder(tokens, merges)
    stats = {}
    for name, chs in splits.items():
        ids = []
        for c in chs:
            ids.extend(enc.encode(c[2]))
            ids.append(eos_id)
        with open(os.path.join(args.out, f"{name}.bin"), "wb") as f:
            f.write(struct.pack(f"<{len(ids)}H", *ids))
        n_chars = sum(len(c[2]) for c in chs)
        stats[name] = {"chapters": len(chs), "characters": n_chars, "tokens": len(ids)}
        print(f"tokens {name}: {len(ids)} ({n_chars / len(ids):.2f} characters/token)")
    # The held-out text exactly as llama-perplexity will read it (no EOS between chapters).
    with open(os.path.join(args.out, "kjv-test.txt"), encoding="ascii") as f:
        ids = enc.encode(f.read())
    with open(os.path.join(args.out, "test_text.bin"), "wb") as f:
        f.write(struct.pack(f"<{len(ids)}H", *ids))
    stats["test_text"] = {"tokens": len(ids)}
    print(f"tokens kjv-test.txt: {len(ids)}")
    with open(os.path.join(args.out, "data-stats.json"), "w") as f:
        json.dump({"verses": n_verses, "chapters": len(chapters), "splits": stats,
                   "vocab_size": len(tokens), "merges": len(merges)}, f, indent=1)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
