# PyTorch definition of the qwen3moe architecture as llama.cpp runs it (src/models/qwen3moe.cpp),
# small enough to train on the KJV corpus; tensor layouts match the GGUF export one to one.
"""qwen3moe in PyTorch.

Per layer (pre-norm residual blocks, RMSNorm everywhere):
  h = x + Wo . attn(rope(q_norm(Wq . n)), rope(k_norm(Wk . n)), Wv . n),   n = attn_norm(x)
  out = h + sum_{e in top-k} w_e . Wdown_e (silu(Wgate_e . m) * (Wup_e . m)),   m = ffn_norm(h)
  router: p = softmax(Wr . m) over all experts, top-k by p, w = p_topk / sum(p_topk)
q_norm/k_norm: RMSNorm over each 64-wide head, one weight vector shared by all heads.
RoPE: NeoX style (pairs (i, i + d/2)), theta_i = pos * base^(-2i/d), over the whole head.
Grouped-query attention: query head h reads kv head h // (n_head / n_head_kv). Scale 1/sqrt(d).
"""

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class Config:
    vocab_size: int = 4096
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_expert: int = 8
    n_expert_used: int = 2
    n_ff_exp: int = 256
    n_ctx: int = 512
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n_ctx, dim, base, device):
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    ang = torch.arange(n_ctx, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope_neox(x, cos, sin):
    # x: (B, H, T, d); pairs (i, i + d/2) rotate by angle i, as ggml's NeoX mode does.
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.wq = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=False)
        self.wk = nn.Linear(c.n_embd, c.n_head_kv * c.head_dim, bias=False)
        self.wv = nn.Linear(c.n_embd, c.n_head_kv * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.norm_eps)

    def forward(self, x, cos, sin):
        c = self.c
        B, T, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, T, c.n_head, c.head_dim)).transpose(1, 2)
        k = self.k_norm(self.wk(x).view(B, T, c.n_head_kv, c.head_dim)).transpose(1, 2)
        v = self.wv(x).view(B, T, c.n_head_kv, c.head_dim).transpose(1, 2)
        q = apply_rope_neox(q, cos[:T], sin[:T]).to(v.dtype)
        k = apply_rope_neox(k, cos[:T], sin[:T]).to(v.dtype)
        group = c.n_head // c.n_head_kv
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(c.head_dim))
        return self.wo(y.transpose(1, 2).reshape(B, T, c.n_head * c.head_dim))


class MoE(nn.Module):
    """Softmax router, top-k, renormalised top-k weights. All experts are evaluated densely and
    combined with a gate matrix that is zero outside the top-k: the same function and gradients as
    sparse dispatch, simpler and fast enough at this size."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.router = nn.Linear(c.n_embd, c.n_expert, bias=False)
        self.w_gate = nn.Parameter(torch.empty(c.n_expert, c.n_ff_exp, c.n_embd))
        self.w_up = nn.Parameter(torch.empty(c.n_expert, c.n_ff_exp, c.n_embd))
        self.w_down = nn.Parameter(torch.empty(c.n_expert, c.n_embd, c.n_ff_exp))

    def forward(self, x):
        c = self.c
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = probs.topk(c.n_expert_used, dim=-1)
        top_w = top_p / top_p.sum(-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_w)
        # Explicit casts: einsum is not on autocast's list of ops it always casts.
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        xd = x.to(dt)
        g = torch.einsum("nd,efd->enf", xd, self.w_gate.to(dt))
        u = torch.einsum("nd,efd->enf", xd, self.w_up.to(dt))
        y = torch.einsum("enf,edf->end", F.silu(g) * u, self.w_down.to(dt))
        out = torch.einsum("ne,end->nd", gates.to(y.dtype), y)
        # Switch-Transformer load-balancing loss: n_expert * sum_e (share of routed slots) * (mean prob).
        routed = (gates > 0).float().mean(0) / c.n_expert_used
        aux = c.n_expert * (routed * probs.mean(0)).sum()
        return out.reshape(shape), aux, routed


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = RMSNorm(c.n_embd, c.norm_eps)
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c.n_embd, c.norm_eps)
        self.moe = MoE(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin))
        m, aux, routed = self.moe(self.ffn_norm(x))
        return x + self.drop(m), aux, routed


class Qwen3Moe(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.tok_embd = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.output_norm = RMSNorm(c.n_embd, c.norm_eps)
        self.output = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        cos, sin = rope_tables(c.n_ctx, c.head_dim, c.rope_base, None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        proj_std = std / math.sqrt(2 * self.c.n_layer)  # residual-branch outputs, GPT-2 style
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith("wo.weight") or name.endswith("w_down"):
                nn.init.normal_(p, 0.0, proj_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.tok_embd(idx)
        aux_total = 0.0
        routed = []
        for blk in self.blocks:
            x, aux, r = blk(x, self.cos, self.sin)
            aux_total = aux_total + aux
            routed.append(r)
        logits = self.output(self.output_norm(x))
        return logits, aux_total / len(self.blocks), routed
