# Exports a trained Qwen3Moe (model.py) to GGUF v3 as llama.cpp's qwen3moe loads it: F16 or Q8_0
# weights, F32 norms and router, complete byte-level BPE tokenizer metadata.
"""GGUF export of the PyTorch model.

Tensor names and ggml shapes (ne[0] innermost, i.e. PyTorch's shape reversed):
  token_embd.weight [n_embd, n_vocab]            output.weight [n_embd, n_vocab]
  output_norm.weight [n_embd] (F32)
  blk.i.attn_norm / ffn_norm [n_embd] (F32)       blk.i.attn_q_norm / attn_k_norm [head_dim] (F32)
  blk.i.attn_q [n_embd, n_head*64]  attn_k/attn_v [n_embd, n_head_kv*64]  attn_output [n_head*64, n_embd]
  blk.i.ffn_gate_inp [n_embd, n_expert] (F32: llama-quantize never quantizes the router either)
  blk.i.ffn_gate_exps / ffn_up_exps [n_embd, n_ff_exp, n_expert]   ffn_down_exps [n_ff_exp, n_embd, n_expert]
"""

import gguf_writer as gw

ARCH = "qwen3moe"


def tensor_list(model):
    """(gguf name, fp32 CPU torch tensor in PyTorch layout, always_f32) for every exported tensor."""
    out = [("token_embd.weight", model.tok_embd.weight, False)]
    for i, blk in enumerate(model.blocks):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", blk.attn_norm.weight, True),
            (p + "attn_q.weight", blk.attn.wq.weight, False),
            (p + "attn_k.weight", blk.attn.wk.weight, False),
            (p + "attn_v.weight", blk.attn.wv.weight, False),
            (p + "attn_output.weight", blk.attn.wo.weight, False),
            (p + "attn_q_norm.weight", blk.attn.q_norm.weight, True),
            (p + "attn_k_norm.weight", blk.attn.k_norm.weight, True),
            (p + "ffn_norm.weight", blk.ffn_norm.weight, True),
            (p + "ffn_gate_inp.weight", blk.moe.router.weight, True),
            (p + "ffn_gate_exps.weight", blk.moe.w_gate, False),
            (p + "ffn_up_exps.weight", blk.moe.w_up, False),
            (p + "ffn_down_exps.weight", blk.moe.w_down, False),
        ]
    out += [("output_norm.weight", model.output_norm.weight, True),
            ("output.weight", model.output.weight, False)]
    return [(n, t.detach().float().cpu().contiguous(), f) for n, t, f in out]


def round_half_away(v):
    """roundf(): halves away from zero (torch.round rounds halves to even)."""
    import torch
    r = torch.round(v)
    t = torch.trunc(v)
    halves = (v - t).abs() == 0.5
    return torch.where(halves, t + torch.sign(v), r)


def q8_0_bytes(t):
    """ggml block_q8_0 for a float32 CPU tensor: per 32 values fp16 d = absmax/127, int8 round(x/d)."""
    import torch
    x = t.reshape(-1, 32).float()
    d = x.abs().amax(dim=1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = round_half_away(x * inv).clamp(-127, 127).to(torch.int8)
    blocks = torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=1)
    return blocks.numpy().tobytes()


def tensor_bytes(t, ggml_type):
    """Raw bytes of a float32 CPU torch tensor in a ggml type."""
    import torch
    if ggml_type == gw.GGML_F32:
        return t.numpy().astype("<f4").tobytes()
    if ggml_type == gw.GGML_F16:
        return t.to(torch.float16).numpy().tobytes()
    if ggml_type == gw.GGML_Q8_0:
        return q8_0_bytes(t)
    raise ValueError(f"unsupported ggml type {ggml_type}")


def write_model(model, tok, path, ggml_type, name, description):
    """Export a Qwen3Moe torch module."""
    tensors = [(n, list(t.shape), f, (lambda gt, t=t: tensor_bytes(t, gt))) for n, t, f in tensor_list(model)]
    write_gguf(model.c, tok, tensors, path, ggml_type, name, description)


def write_gguf(c, tok, tensors, path, ggml_type, name, description):
    """c: model.Config-like hyper-parameters; tensors: (gguf name, PyTorch-order shape, always_f32,
    function ggml type -> raw bytes). Torch-free, so tests can write models from plain lists."""
    if len(tok["tokens"]) != c.vocab_size:
        raise ValueError(f"tokenizer has {len(tok['tokens'])} tokens, model vocab is {c.vocab_size}")
    w = gw.GGUFWriter()
    w.add_string("general.architecture", ARCH)
    w.add_string("general.name", name)
    w.add_string("general.description", description)
    w.add_uint32("general.file_type", gw.FTYPE_MOSTLY_F16 if ggml_type == gw.GGML_F16 else gw.FTYPE_MOSTLY_Q8_0)
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32(f"{ARCH}.context_length", c.n_ctx)
    w.add_uint32(f"{ARCH}.embedding_length", c.n_embd)
    w.add_uint32(f"{ARCH}.block_count", c.n_layer)
    w.add_uint32(f"{ARCH}.feed_forward_length", c.n_ff_exp)
    w.add_uint32(f"{ARCH}.expert_feed_forward_length", c.n_ff_exp)
    w.add_uint32(f"{ARCH}.expert_count", c.n_expert)
    w.add_uint32(f"{ARCH}.expert_used_count", c.n_expert_used)
    w.add_uint32(f"{ARCH}.attention.head_count", c.n_head)
    w.add_uint32(f"{ARCH}.attention.head_count_kv", c.n_head_kv)
    w.add_uint32(f"{ARCH}.attention.key_length", c.head_dim)
    w.add_uint32(f"{ARCH}.attention.value_length", c.head_dim)
    w.add_float32(f"{ARCH}.attention.layer_norm_rms_epsilon", c.norm_eps)
    w.add_uint32(f"{ARCH}.rope.dimension_count", c.head_dim)
    w.add_float32(f"{ARCH}.rope.freq_base", c.rope_base)

    special = set(tok["special_ids"])
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", tok["pre"])
    w.add_array("tokenizer.ggml.tokens", gw.T_STRING, tok["tokens"])
    # llama_token_type: 1 = normal, 3 = control.
    w.add_array("tokenizer.ggml.token_type", gw.T_INT32,
                [3 if i in special else 1 for i in range(len(tok["tokens"]))])
    w.add_array("tokenizer.ggml.merges", gw.T_STRING, tok["merges"])
    w.add_uint32("tokenizer.ggml.bos_token_id", tok["bos_id"])
    w.add_uint32("tokenizer.ggml.eos_token_id", tok["eos_id"])
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)

    for tname, shape, always_f32, to_bytes in tensors:
        gtype = gw.GGML_F32 if always_f32 else ggml_type
        w.add_tensor(tname, list(reversed(shape)), gtype, to_bytes(gtype))
    w.write(path)
