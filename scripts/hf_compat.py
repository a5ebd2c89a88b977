#!/usr/bin/env python3
"""Hugging Face transformers compatibility helper for Convoy.

This script is a *developer* tool: it is not needed to build or test Convoy,
and it is not run by CI. It needs Python 3 with ``torch``, ``transformers``,
``safetensors`` and ``numpy`` installed, e.g.::

    python3 -m venv /tmp/hfenv
    /tmp/hfenv/bin/pip install "torch==2.13.0+cpu"   # CPU-only wheel
    /tmp/hfenv/bin/pip install transformers safetensors numpy

Subcommands
-----------
make-fixture OUTDIR
    Build a tiny randomly initialised GPT-2 (vocab 256, context 32, width 32,
    2 layers, 4 heads, gelu_new, no dropout, tied embeddings) with
    ``torch.manual_seed(1234)`` and save it with ``save_pretrained`` so that
    OUTDIR holds ``model.safetensors`` and ``config.json`` exactly as
    transformers writes them. Then run the model (eval mode) on a fixed
    2x16 batch of token ids and write ``OUTDIR/reference.json``::

        {"input_ids": [[...16 ints...], [...]],
         "logits":    [[[...256 floats...] x16] x2],   # rounded to 6 sig. digits
         "loss":      float,   # model(input_ids, labels=input_ids).loss
         "transformers_version": str, "torch_version": str}

    ``loss`` is transformers' own shifted next-token cross-entropy (mean over
    the 2*15 predicted positions). This is the fixture committed under
    ``Tests/ConvoyNNTests/Fixtures/hf-gpt2-tiny/``.

check DIR [--reference REF_JSON] [--tolerance TOL]
    Load ``GPT2LMHeadModel.from_pretrained(DIR, output_loading_info=True)``
    (e.g. a directory written by Convoy's exporter) and fail (exit 1) if
    transformers reports any missing / unexpected / mismatched keys or error
    messages, or if loading raises. With ``--reference`` (JSON with
    ``input_ids`` and ``logits``, optionally ``loss``, in the format above)
    run the model on those ids and fail if the max abs logit difference (or
    the loss difference) exceeds TOL (default 1e-4). Prints a one-line
    summary starting with ``OK`` or ``FAIL`` either way.

dump-header FILE_OR_DIR
    Print the safetensors header (tensor names, dtypes, shapes, and the
    ``__metadata__`` dict) of a ``.safetensors`` file, or of
    ``DIR/model.safetensors``.
"""

import argparse
import inspect
import json
import os
import sys

FIXTURE_CONFIG = dict(
    vocab_size=256,
    n_positions=32,
    n_embd=32,
    n_layer=2,
    n_head=4,
    activation_function="gelu_new",
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
)
SEED = 1234
SIG_DIGITS = 6


def fixture_input_ids():
    return [
        [(7 * i + 3) % 256 for i in range(16)],
        [(11 * i + 5) % 256 for i in range(16)],
    ]


def _round_sig(x, digits=SIG_DIGITS):
    return float(f"{x:.{digits}g}")


def _safetensors_path(path):
    if os.path.isdir(path):
        return os.path.join(path, "model.safetensors")
    return path


def dump_header(path, out=sys.stdout):
    """Print the raw safetensors header (read directly, no torch needed)."""
    import struct

    path = _safetensors_path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None)
    print(f"{path}: {len(header)} tensors, header {n} bytes, "
          f"file {os.path.getsize(path)} bytes", file=out)
    for name in sorted(header):
        info = header[name]
        print(f"  {name:40s} {info['dtype']:5s} {info['shape']}", file=out)
    print(f"  __metadata__: {json.dumps(meta)}", file=out)
    return header, meta


def cmd_make_fixture(args):
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    outdir = args.outdir
    os.makedirs(outdir, exist_ok=True)

    config = GPT2Config(**FIXTURE_CONFIG)
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    model.eval()

    save_kwargs = {}
    # transformers < 5 has a `safe_serialization` flag; 5.x always writes safetensors.
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True
    model.save_pretrained(outdir, **save_kwargs)

    ids = fixture_input_ids()
    input_ids = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids, labels=input_ids)
    logits = out.logits.to(torch.float32).tolist()
    logits = [[[_round_sig(v) for v in row] for row in seq] for seq in logits]
    reference = {
        "input_ids": ids,
        "logits": logits,
        "loss": float(out.loss),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    ref_path = os.path.join(outdir, "reference.json")
    with open(ref_path, "w") as f:
        json.dump(reference, f, separators=(",", ":"))
        f.write("\n")

    total = 0
    for name in sorted(os.listdir(outdir)):
        size = os.path.getsize(os.path.join(outdir, name))
        total += size
        print(f"wrote {os.path.join(outdir, name)} ({size} bytes)")
    print(f"total {total} bytes; loss={reference['loss']:.8f}; "
          f"transformers {transformers.__version__}, torch {torch.__version__}")
    dump_header(outdir)
    return 0


def cmd_check(args):
    import torch
    from transformers import GPT2LMHeadModel

    problems = []
    try:
        model, info = GPT2LMHeadModel.from_pretrained(args.dir, output_loading_info=True)
    except Exception as e:  # e.g. shape mismatch raises, bad header, missing config
        print(f"FAIL {args.dir}: from_pretrained raised {type(e).__name__}: {e}")
        return 1

    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        vals = info.get(key) or []
        if vals:
            vals = sorted(vals, key=str)
            problems.append(f"{key}={vals}")
            print(f"{key}: {vals}")

    diff_msg = ""
    if args.reference:
        with open(args.reference) as f:
            ref = json.load(f)
        model.eval()
        input_ids = torch.tensor(ref["input_ids"], dtype=torch.long)
        want = torch.tensor(ref["logits"], dtype=torch.float32)
        with torch.no_grad():
            out = model(input_ids, labels=input_ids)
        got = out.logits.to(torch.float32)
        if got.shape != want.shape:
            problems.append(f"logits shape {tuple(got.shape)} != reference {tuple(want.shape)}")
        else:
            max_diff = (got - want).abs().max().item()
            diff_msg = f" max|dlogits|={max_diff:.3g}"
            print(f"max abs logit difference: {max_diff:.6g}")
            if not max_diff <= args.tolerance:
                problems.append(f"max abs logit diff {max_diff:.3g} > {args.tolerance:g}")
        if "loss" in ref:
            loss_diff = abs(float(out.loss) - float(ref["loss"]))
            diff_msg += f" |dloss|={loss_diff:.3g}"
            print(f"loss {float(out.loss):.8f} vs reference {float(ref['loss']):.8f}")
            if not loss_diff <= args.tolerance:
                problems.append(f"loss diff {loss_diff:.3g} > {args.tolerance:g}")

    n_params = sum(p.numel() for p in model.parameters())
    if problems:
        print(f"FAIL {args.dir}: " + "; ".join(problems))
        return 1
    print(f"OK {args.dir}: loaded cleanly ({n_params} params){diff_msg}")
    return 0


def cmd_dump_header(args):
    dump_header(args.path)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Hugging Face transformers compatibility helper for Convoy "
                    "(see module docstring).")
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("make-fixture", help="write the tiny GPT-2 fixture + reference.json")
    m.add_argument("outdir")
    m.set_defaults(func=cmd_make_fixture)

    c = sub.add_parser("check", help="load DIR with transformers and compare to a reference")
    c.add_argument("dir")
    c.add_argument("--reference", help="JSON with input_ids and logits (and optionally loss)")
    c.add_argument("--tolerance", type=float, default=1e-4)
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("dump-header", help="print a safetensors header")
    d.add_argument("path")
    d.set_defaults(func=cmd_dump_header)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
