#!/usr/bin/env python3
"""Fine-tune a Hugging Face GPT-2 with Convoy, then check the result with transformers (developer tool, not CI).

Needs ``torch``, ``transformers`` and ``tokenizers`` and a built ``convoy`` (``swift build -c release``)::

    python3 scripts/hf_finetune_check.py [--model DIR] [--data FILE] [--steps N] [--context T] [--convoy PATH]

Steps:
1. ``convoy train --init-from DIR --data FILE`` (default: the test fixture ``Tests/ConvoyTrainTests/Fixtures/
   hf-gpt2-bpe-tiny`` and its ``corpus.txt``) into a temporary run directory; its final checkpoint is a
   Hugging Face directory with the tokenizer files copied in.
2. ``GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` on that directory, failing on any
   missing, unexpected or mismatched key.
3. The tokenizer's ids of FILE must equal the ids the model was trained on: the windows are built from
   ``AutoTokenizer``'s ids exactly as ``convoy eval`` builds them (window i: inputs ids[iT:(i+1)T], targets
   shifted by one), and the mean cross-entropy is computed with transformers in float64 from float32 logits.
4. ``convoy eval --checkpoint DIR --data FILE --context T --json`` on the same windows; the two losses are
   compared and the number of agreeing significant digits printed. Exit 1 when they differ by more than
   ``--tolerance`` (relative, default 1e-5) or loading reports problems.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "Tests", "ConvoyTrainTests", "Fixtures", "hf-gpt2-bpe-tiny")


def agreeing_digits(a, b):
    if a == b:
        return 17
    return max(0, int(math.floor(-math.log10(abs(a - b) / max(abs(b), 1e-300)))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=FIXTURE)
    parser.add_argument("--data", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dp", type=int, default=1)
    parser.add_argument("--convoy", default=os.path.join(ROOT, ".build", "release", "convoy"))
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    data = args.data or os.path.join(args.model, "corpus.txt")

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    with tempfile.TemporaryDirectory(prefix="convoy-finetune-") as scratch:
        run = os.path.join(scratch, "run")
        train = [args.convoy, "train", "--init-from", args.model, "--data", data, "--steps", str(args.steps),
                 "--context", str(args.context), "--batch", str(args.batch), "--dp", str(args.dp), "--lr", "1e-3",
                 "--warmup", "2", "--eval-every", "0", "--log-every", "5", "--output", run,
                 "--token-cache", os.path.join(scratch, "cache")]
        print("$", " ".join(train))
        subprocess.run(train, check=True)
        final = os.path.join(run, "final")
        print("final checkpoint:", sorted(os.listdir(final)))

        model, info = GPT2LMHeadModel.from_pretrained(final, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        tokenizer = AutoTokenizer.from_pretrained(final)
        model.eval()

        text = open(data, "rb").read().decode("utf-8")
        ids = tokenizer(text)["input_ids"]
        reference_ids = AutoTokenizer.from_pretrained(args.model)(text)["input_ids"]
        T = args.context
        windows = (len(ids) - 1) // T
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, windows, 16):
                rows = range(start, min(windows, start + 16))
                inputs = torch.tensor([ids[i * T:(i + 1) * T] for i in rows])
                targets = torch.tensor([ids[i * T + 1:(i + 1) * T + 1] for i in rows])
                logits = model(inputs).logits.double()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
                total += float(loss)
                count += targets.numel()
        hf_loss = total / count

        evaluate = [args.convoy, "eval", "--checkpoint", final, "--data", data, "--context", str(T), "--json"]
        print("$", " ".join(evaluate))
        result = json.loads(subprocess.run(evaluate, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        convoy_loss, convoy_tokens = result["loss"], result["tokens"]

        relative = abs(convoy_loss - hf_loss) / abs(hf_loss)
        digits = agreeing_digits(convoy_loss, hf_loss)
        print(f"tokens: AutoTokenizer {len(ids)} ids (same as the source model's tokenizer: {ids == reference_ids}); "
              f"scored {count} targets in {windows} windows of {T}; convoy eval scored {convoy_tokens}")
        print(f"loss: transformers {hf_loss:.10f}, convoy eval {convoy_loss:.10f}; relative difference {relative:.2e} "
              f"({digits} significant digits agree)")
        ok = not problems and ids == reference_ids and convoy_tokens == count and relative <= args.tolerance
        if problems:
            print("loading problems:", problems)
        print("OK" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
