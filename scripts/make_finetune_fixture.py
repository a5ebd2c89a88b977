#!/usr/bin/env python3
"""Make the fine-tuning fixture: a tiny randomly initialised Hugging Face GPT-2 with a small byte-level BPE.

Developer tool (not run by CI). Needs ``torch``, ``transformers`` and ``tokenizers``::

    python3 scripts/make_finetune_fixture.py Tests/ConvoyTrainTests/Fixtures/hf-gpt2-bpe-tiny

OUTDIR then holds what ``save_pretrained`` writes for the model (``config.json``, ``model.safetensors``) and
for a ``GPT2TokenizerFast`` (``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
``special_tokens_map.json``), plus ``corpus.txt``, the text the Swift test fine-tunes on. The BPE (vocabulary
384 with ``<|endoftext|>``) is trained by ``tokenizers`` on the corpus; the model has 2 layers, width 32,
4 heads, 32 positions, no dropout, tied embeddings, ``torch.manual_seed(1234)``.
"""

import inspect
import os
import sys

VOCAB = 384
SEED = 1234


def corpus_text():
    """Deterministic mixed text: prose, code, numbers, Unicode and long whitespace runs."""
    prose = [
        "The convoy moved slowly through the valley, each truck carrying its share of the load.",
        "Fine-tuning adapts a pretrained model to a new corpus with a few steps of gradient descent.",
        "A tokenizer turns text into ids; a model turns ids into the probabilities of the next id.",
        "Über den Wolken muss die Freiheit wohl grenzenlos sein — café, naïve, 東京, 😀.",
    ]
    code = [
        "def train(model, data, steps):\n    for step in range(steps):\n        loss = model(data[step])\n        loss.backward()\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += values[i] * weights[i];\n}\n",
    ]
    lines = []
    for i in range(60):
        lines.append(prose[i % len(prose)])
        if i % 3 == 0:
            lines.append(code[(i // 3) % len(code)])
        if i % 7 == 0:
            lines.append(f"step {i}: loss {3.0 / (i + 1):.4f}    lr {1e-3 * (i % 5 + 1):.1e}        ")
        if i % 11 == 0:
            lines.append("<|endoftext|>")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)

    import tokenizers
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    text = corpus_text()
    with open(os.path.join(outdir, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write(text)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([text], trainer=trainer)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    tokenizer.save_pretrained(outdir)

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    save_kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True
    model.save_pretrained(outdir, **save_kwargs)

    total = 0
    for name in sorted(os.listdir(outdir)):
        size = os.path.getsize(os.path.join(outdir, name))
        total += size
        print(f"wrote {os.path.join(outdir, name)} ({size} bytes)")
    ids = tokenizer(text)["input_ids"]
    print(f"total {total} bytes; vocabulary {len(tokenizer)}; corpus {len(text.encode())} bytes -> {len(ids)} tokens; "
          f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
