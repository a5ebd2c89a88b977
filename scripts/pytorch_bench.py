#!/usr/bin/env python3
"""PyTorch eager baseline for `convoy bench train` (not run by CI).

Times full AdamW training steps of the same GPT-2 (transformers' GPT2LMHeadModel: 6 layers, width 384,
6 heads, context 256, byte vocabulary 256, dropout 0) on random tokens, batch 8 x 256, with 2 threads, so the
tokens/s can be compared with Convoy's on the same machine in the same session:

    python scripts/pytorch_bench.py --json
    python scripts/pytorch_bench.py --bf16 --json   # torch.autocast("cpu", dtype=torch.bfloat16)

With --bf16 the forward and the loss run under CPU autocast in bfloat16 (PyTorch's mixed precision: matmuls
in bf16, fp32 master weights and optimizer), the reference for `convoy bench train --precision bf16`.
"""
import argparse, contextlib, json, time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help='run forward and loss under torch.autocast("cpu", dtype=torch.bfloat16)')
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(1)
    torch.set_num_threads(args.threads)
    config = GPT2Config(vocab_size=256, n_positions=args.context, n_embd=args.d_model, n_layer=args.layers,
                        n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new")
    model = GPT2LMHeadModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    times = []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, 256, (args.batch, args.context))
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with autocast:
            loss = model(tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            times.append(elapsed)
    step_s = sum(times) / len(times)
    tokens_per_s = args.batch * args.context / step_s
    parameters = sum(p.numel() for p in model.parameters())
    precision = "bf16" if args.bf16 else "fp32"
    print(f"PyTorch {torch.__version__} eager {precision}: {parameters} parameters, step {step_s * 1e3:.1f} ms, {tokens_per_s:.0f} tokens/s")
    if args.json:
        print(json.dumps({"tokens_per_s": tokens_per_s, "step_ms": step_s * 1e3, "parameters": parameters,
                          "torch": torch.__version__, "precision": precision}))


if __name__ == "__main__":
    main()
