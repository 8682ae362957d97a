#!/usr/bin/env python3
# Torch-free check of the GGUF export path: writes a tiny random-weight qwen3moe with the real
# tokenizer in F16 and Q8_0, reads both back, and (optionally) lets llama.cpp load them.
"""Usage: check_export.py --tokenizer DATA/tokenizer.json --out DIR [--llama-bin DIR]"""

import argparse
import os
import random
import subprocess
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402
import gguf_writer as gw  # noqa: E402


def tiny_tensors(c, rng):
    def rand(shape, scale=0.05):
        n = 1
        for d in shape:
            n *= d
        return [rng.gauss(0.0, scale) for _ in range(n)]

    def ones(n):
        return [1.0] * n

    spec = [("token_embd.weight", [c.vocab_size, c.n_embd], False)]
    for i in range(c.n_layer):
        p = f"blk.{i}."
        spec += [(p + "attn_norm.weight", [c.n_embd], True),
                 (p + "attn_q.weight", [c.n_head * c.head_dim, c.n_embd], False),
                 (p + "attn_k.weight", [c.n_head_kv * c.head_dim, c.n_embd], False),
                 (p + "attn_v.weight", [c.n_head_kv * c.head_dim, c.n_embd], False),
                 (p + "attn_output.weight", [c.n_embd, c.n_head * c.head_dim], False),
                 (p + "attn_q_norm.weight", [c.head_dim], True),
                 (p + "attn_k_norm.weight", [c.head_dim], True),
                 (p + "ffn_norm.weight", [c.n_embd], True),
                 (p + "ffn_gate_inp.weight", [c.n_expert, c.n_embd], True),
                 (p + "ffn_gate_exps.weight", [c.n_expert, c.n_ff_exp, c.n_embd], False),
                 (p + "ffn_up_exps.weight", [c.n_expert, c.n_ff_exp, c.n_embd], False),
                 (p + "ffn_down_exps.weight", [c.n_expert, c.n_embd, c.n_ff_exp], False)]
    spec += [("output_norm.weight", [c.n_embd], True), ("output.weight", [c.vocab_size, c.n_embd], False)]
    out = []
    for name, shape, f32 in spec:
        vals = ones(shape[0]) if len(shape) == 1 else rand(shape, 1.0 if "gate_inp" in name else 0.05)

        def to_bytes(gt, vals=vals):
            if gt == gw.GGML_F32:
                return gw.f32_bytes(vals)
            if gt == gw.GGML_F16:
                return gw.f16_bytes(vals)
            return gw.quantize_q8_0(vals)
        out.append((name, shape, f32, to_bytes, vals))
    return out


def main():
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--llama-bin", help="folder with llama-simple; if given, load and generate")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(args.tokenizer, encoding="utf-8") as f:
        tok = json.load(f)
    c = types.SimpleNamespace(vocab_size=len(tok["tokens"]), n_embd=64, n_layer=1, n_head=1, n_head_kv=1,
                              head_dim=64, n_expert=8, n_expert_used=2, n_ff_exp=64, n_ctx=64,
                              rope_base=10000.0, norm_eps=1e-6)
    tensors = tiny_tensors(c, random.Random(7))
    for suffix, gt in (("f16", gw.GGML_F16), ("q8_0", gw.GGML_Q8_0)):
        path = os.path.join(args.out, f"tiny-{suffix}.gguf")
        export.write_gguf(c, tok, [t[:4] for t in tensors], path, gt, "tiny", "export check")
        meta, back = gw.read_gguf(path)
        assert meta["general.architecture"] == "qwen3moe"
        assert meta["tokenizer.ggml.tokens"] == tok["tokens"]
        assert meta["tokenizer.ggml.merges"] == tok["merges"]
        for name, shape, f32, _, vals in tensors:
            ne, gtype, data = back[name]
            assert ne == list(reversed(shape)), (name, ne, shape)
            if gtype == gw.GGML_Q8_0:
                deq = gw.dequantize_q8_0(data)
                err = max(abs(a - b) for a, b in zip(deq, vals))
                assert err <= max(abs(v) for v in vals) / 127 * 0.51 + 1e-3, (name, err)
            elif gtype == gw.GGML_F32:
                assert data == gw.f32_bytes(vals), name
            else:
                assert data == gw.f16_bytes(vals), name
        print(f"{path}: {os.path.getsize(path)} bytes, {len(back)} tensors, {len(meta)} keys: read back ok")
        if args.llama_bin:
            cmd = [os.path.join(args.llama_bin, "llama-simple"), "-m", path, "-n", "8", "In the beginning"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            tail = (r.stdout + r.stderr).strip().splitlines()[-6:]
            print(f"llama-simple rc={r.returncode}:\n  " + "\n  ".join(tail))
            if r.returncode != 0:
                sys.exit(1)


if __name__ == "__main__":
    main()
