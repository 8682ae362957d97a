#!/usr/bin/env python3
# Trains Tessera's embedded qwen3moe model on the KJV token streams from prepare_data.py, evaluates
# it on the held-out split and exports GGUF (F16 + Q8_0). Needs PyTorch; runs on one CUDA GPU.
"""Train, evaluate, export.

Samples: [BOS] + a random crop of ctx-1 tokens of the train stream; the loss covers every position.
Evaluation ("stream loss"): non-overlapping [BOS] + ctx-1 windows over a split's token stream.
"llama-perplexity style": the held-out text file tokenized with BOS, cut into ctx-token chunks whose
first token is BOS, scored on the second half of each chunk only, as llama.cpp's llama-perplexity does.
The checkpoint with the lowest validation loss is the one evaluated on the test split and exported.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402
import gguf_writer as gw  # noqa: E402
from model import Config, Qwen3Moe  # noqa: E402


def load_stream(path, device):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=torch.int16).to(torch.int64).bitwise_and(0xFFFF).to(device)


def stream_windows(stream, ctx, bos):
    n = (len(stream) - 1) // (ctx - 1)
    starts = torch.arange(n, device=stream.device) * (ctx - 1)
    idx = starts[:, None] + torch.arange(ctx, device=stream.device)[None, :]
    y = stream[idx]
    x = torch.cat([torch.full((n, 1), bos, device=stream.device, dtype=torch.int64), y[:, :-1]], dim=1)
    return x, y


@torch.no_grad()
def eval_stream(model, stream, ctx, bos, batch=64):
    model.eval()
    x, y = stream_windows(stream, ctx, bos)
    tot, cnt = 0.0, 0
    for i in range(0, len(x), batch):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _, _ = model(x[i:i + batch])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y[i:i + batch].reshape(-1),
                               reduction="sum")
        tot += loss.item()
        cnt += y[i:i + batch].numel()
    model.train()
    return tot / cnt, cnt


@torch.no_grad()
def eval_llama_ppl_style(model, text_tokens, ctx, bos):
    """Mirror llama-perplexity: tokens = [BOS] + text; chunk k = tokens[k*ctx:(k+1)*ctx] with its first
    token set to BOS; logits at positions ctx/2 .. ctx-2 predict the next token."""
    model.eval()
    toks = torch.cat([torch.tensor([bos], device=text_tokens.device), text_tokens])
    n_chunk = len(toks) // ctx
    x = toks[:n_chunk * ctx].reshape(n_chunk, ctx).clone()
    x[:, 0] = bos
    first = ctx // 2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, _, _ = model(x)
    lp = F.log_softmax(logits.float()[:, first:ctx - 1], dim=-1)
    tgt = x[:, first + 1:ctx]
    nll = -lp.gather(-1, tgt[..., None]).squeeze(-1)
    model.train()
    return nll.mean().item(), n_chunk, nll.numel()


def lr_at(step, steps, warmup, lr, min_ratio):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def train_one(cfg, hp, data, log, deadline):
    torch.manual_seed(hp["seed"])
    gen = torch.Generator(device="cpu").manual_seed(hp["seed"])
    model = Qwen3Moe(cfg).cuda()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=hp["lr"], betas=(0.9, 0.95), eps=1e-8, fused=True)
    train, val = data["train"], data["val"]
    bos, ctx, B = data["bos"], cfg.n_ctx, hp["batch"]
    hist = {"step": [], "train_loss": [], "aux_loss": [], "lr": [], "val_step": [], "val_loss": [],
            "expert_share": []}
    best = {"val_loss": float("inf"), "step": -1, "state": None}
    t0 = time.time()
    run_loss = torch.zeros((), device="cuda")
    stopped_early = False
    for step in range(hp["steps"]):
        lr = lr_at(step, hp["steps"], hp["warmup"], hp["lr"], hp["min_lr_ratio"])
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train) - ctx, (B,), generator=gen).cuda()
        y = train[starts[:, None] + torch.arange(ctx, device="cuda")[None, :]]
        x = torch.cat([torch.full((B, 1), bos, device="cuda", dtype=torch.int64), y[:, :-1]], dim=1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, aux, routed = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))
        total = loss + hp["aux_coef"] * aux
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
        opt.step()
        run_loss += loss.detach()
        if (step + 1) % hp["log_every"] == 0:
            # Mean training loss over the last log_every steps (one host sync per log_every steps).
            hist["step"].append(step + 1)
            hist["train_loss"].append(round(run_loss.item() / hp["log_every"], 4))
            hist["aux_loss"].append(round(float(aux.detach()), 4))
            hist["lr"].append(lr)
            run_loss.zero_()
        if (step + 1) % hp["eval_every"] == 0 or step + 1 == hp["steps"]:
            vl, _ = eval_stream(model, val, ctx, bos)
            hist["val_step"].append(step + 1)
            hist["val_loss"].append(round(vl, 4))
            hist["expert_share"].append([[round(v, 3) for v in r.tolist()] for r in routed])
            el = time.time() - t0
            log(f"  step {step + 1}/{hp['steps']} lr {lr:.2e} train {loss.item():.4f} aux {float(aux.detach()):.3f} "
                f"val {vl:.4f} ({el:.0f} s, {el / (step + 1) * 1000:.0f} ms/step)")
            if vl < best["val_loss"]:
                best = {"val_loss": vl, "step": step + 1,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            if time.time() > deadline:
                log(f"  time limit reached at step {step + 1}: stopping this run")
                stopped_early = True
                break
    model.load_state_dict(best["state"])
    return model, {"history": hist, "best_step": best["step"], "best_val_loss": best["val_loss"],
                   "train_seconds": round(time.time() - t0, 1), "stopped_early": stopped_early}


def self_check_q8_0(log):
    """The vectorised Q8_0 quantizer must agree with gguf_writer's pure-Python ggml reference."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(64 * 32, generator=g) * torch.rand(64 * 32, generator=g) * 3
    t[:32] = 0.0  # an all-zero block: d = 0, q = 0
    # absmax 127 gives d = 1, so these are exact halves: roundf rounds them away from zero.
    t[32:64] = torch.tensor([127.0] + [(k - 15) + 0.5 for k in range(31)])
    fast = export.q8_0_bytes(t)
    ref = gw.quantize_q8_0(t.tolist())
    diff = sum(a != b for a, b in zip(fast, ref))
    log(f"self-check Q8_0: {len(fast)} bytes, {diff} differ from the pure-Python reference")
    if len(fast) != len(ref) or diff > 2:
        raise RuntimeError("Q8_0 quantizer disagrees with the reference")


def check_gguf(path, model, ggml_type, log):
    meta, tensors = gw.read_gguf(path)
    n_bad = 0
    for name, t, always_f32 in export.tensor_list(model):
        ne, gtype, data = tensors[name]
        if ne != list(reversed(t.shape)):
            raise RuntimeError(f"{path}: {name} has ne {ne}")
        if gtype == gw.GGML_Q8_0:
            back = torch.tensor(gw.dequantize_q8_0(data[:34 * 64]))
            ref = t.reshape(-1)[:len(back)]
            err = (back - ref).abs().max().item()
            if err > ref.abs().max().item() / 127 + 1e-6:
                n_bad += 1
        else:
            dt = torch.float32 if gtype == gw.GGML_F32 else torch.float16
            back = torch.frombuffer(bytearray(data), dtype=dt).float()
            if not torch.allclose(back, t.reshape(-1).to(dt).float()):
                n_bad += 1
    if n_bad:
        raise RuntimeError(f"{path}: {n_bad} tensors do not round-trip")
    log(f"check {os.path.basename(path)}: {len(tensors)} tensors, {len(meta)} metadata keys, round-trip ok")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder written by prepare_data.py")
    ap.add_argument("--out", required=True, help="folder for the GGUF files and the training log")
    ap.add_argument("--name", default="tessera-kjv-moe")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps: checks the whole pipeline")
    ap.add_argument("--variants", default='[{}]',
                    help="JSON list of hyper-parameter overrides tried in order; the best validation loss wins")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds of training for all variants")
    ap.add_argument("--split-mb", type=float, default=0.0,
                    help="also split files larger than this many MiB into parts (device transfer limit)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    # Reproducibility: seeded sampling and initialisation, deterministic kernels where PyTorch has them.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # The fused attention kernels accumulate gradients with atomics (non-deterministic); the math
    # backend does not, and costs little at this size.
    with sdpa_kernel([SDPBackend.MATH]):
        run(args, log, log_lines)


def run(args, log, log_lines):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
    self_check_q8_0(log)

    with open(os.path.join(args.data, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    data = {k: load_stream(os.path.join(args.data, f"{k}.bin"), "cuda") for k in ("train", "val", "test")}
    data["test_text"] = load_stream(os.path.join(args.data, "test_text.bin"), "cuda")
    data["bos"] = tok["bos_id"]
    log("tokens: " + ", ".join(f"{k} {len(data[k])}" for k in ("train", "val", "test", "test_text")))

    if args.smoke:
        cfg = Config(vocab_size=len(tok["tokens"]), n_embd=64, n_layer=1, n_head=1, n_head_kv=1,
                     n_ff_exp=64, n_ctx=64)
        base_hp = dict(steps=20, batch=8, eval_every=10, log_every=5)
    else:
        cfg = Config(vocab_size=len(tok["tokens"]))
        base_hp = dict(steps=1500, batch=32, eval_every=50, log_every=10)
    base_hp.update(dict(seed=1234, lr=2e-3, warmup=100, min_lr_ratio=0.02, weight_decay=0.1,
                        aux_coef=0.01, grad_clip=1.0, dropout=0.1))
    if args.smoke:
        base_hp["warmup"] = 5

    results = []
    best = None
    t_start = time.time()
    for vi, over in enumerate(json.loads(args.variants)):
        hp = dict(base_hp, **over)
        vcfg = dataclasses.replace(cfg, dropout=hp["dropout"])
        elapsed = time.time() - t_start
        if results:
            per_step = results[-1]["train_seconds"] / max(1, results[-1]["history"]["step"][-1])
            if elapsed + per_step * hp["steps"] * 1.1 > args.time_budget:
                log(f"variant {vi} {over}: skipped, would exceed the time budget")
                continue
        log(f"variant {vi}: {json.dumps(over)} -> {json.dumps(hp)}")
        model, res = train_one(vcfg, hp, data, log, t_start + args.time_budget)
        res.update({"variant": vi, "overrides": over, "hparams": hp})
        log(f"variant {vi}: best val loss {res['best_val_loss']:.4f} at step {res['best_step']}, "
            f"{res['train_seconds']} s")
        results.append(res)
        if best is None or res["best_val_loss"] < best[1]["best_val_loss"]:
            best = (model, res)
        else:
            del model
    model, res = best
    test_loss, test_n = eval_stream(model, data["test"], cfg.n_ctx, data["bos"])
    val_loss, _ = eval_stream(model, data["val"], cfg.n_ctx, data["bos"])
    ppl_loss, n_chunk, n_scored = eval_llama_ppl_style(model, data["test_text"], cfg.n_ctx, data["bos"])
    n_params = sum(p.numel() for p in model.parameters())
    active = n_params - sum(b.moe.w_gate.numel() + b.moe.w_up.numel() + b.moe.w_down.numel()
                            for b in model.blocks) * (cfg.n_expert - cfg.n_expert_used) // cfg.n_expert
    log(f"chosen variant {res['variant']} (step {res['best_step']}): val loss {val_loss:.4f}, "
        f"test loss {test_loss:.4f} (ppl {math.exp(test_loss):.2f}, {test_n} tokens); "
        f"llama-perplexity style on kjv-test.txt: loss {ppl_loss:.4f} ppl {math.exp(ppl_loss):.2f} "
        f"({n_chunk} chunks of {cfg.n_ctx}, {n_scored} scored)")
    log(f"parameters: {n_params} total, {active} active per token")

    files = {}
    desc = ("Trained by the Tessera project on the King James Bible (public domain, Debian bible-kjv); "
            "tools/train in the Tessera repository")
    for suffix, gtype in (("f16", gw.GGML_F16), ("q8_0", gw.GGML_Q8_0)):
        path = os.path.join(args.out, f"{args.name}-{suffix}.gguf")
        export.write_model(model, tok, path, gtype, args.name, desc)
        check_gguf(path, model, gtype, log)
        files[os.path.basename(path)] = {"bytes": os.path.getsize(path), "sha256": sha256(path)}
        log(f"wrote {path}: {os.path.getsize(path)} bytes")
        if args.split_mb and os.path.getsize(path) > args.split_mb * 2**20:
            part = int(args.split_mb * 2**20)
            with open(path, "rb") as f:
                k = 0
                while True:
                    chunk = f.read(part)
                    if not chunk:
                        break
                    with open(f"{path}.part{k}", "wb") as g:
                        g.write(chunk)
                    k += 1
            os.remove(path)
            log(f"split {os.path.basename(path)} into {k} parts (cat {os.path.basename(path)}.part* to join)")

    summary = {
        "name": args.name, "smoke": args.smoke, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0), "config": dataclasses.asdict(cfg),
        "parameters": n_params, "active_parameters": active, "chosen_variant": res["variant"],
        "best_step": res["best_step"], "val_loss": val_loss, "test_loss": test_loss,
        "test_ppl": math.exp(test_loss), "test_tokens": test_n,
        "test_llama_ppl_style_loss": ppl_loss, "test_llama_ppl_style_ppl": math.exp(ppl_loss),
        "test_llama_ppl_style_chunks": n_chunk, "files": files,
        "runs": results, "log": log_lines,
    }
    with open(os.path.join(args.out, "training-log.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
