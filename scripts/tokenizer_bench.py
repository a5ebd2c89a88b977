#!/usr/bin/env python3
"""Hugging Face `tokenizers` beside `convoy bench tokenize` on the same file, in the same run (not run by CI).

    python3 scripts/tokenizer_bench.py --tokenizer DIR_OR_JSON --input FILE [--convoy .build/release/convoy]
    python3 scripts/tokenizer_bench.py            # makes a corpus and a 50k tokenizer first (see below)

Times `tokenizers` single-threaded (TOKENIZERS_PARALLELISM=false): the whole file as one `encode`, and the
file's lines through `encode_batch`; then `encode_batch` with parallelism on (a subprocess with
RAYON_NUM_THREADS=--threads). Runs `convoy bench tokenize --json` on the same file and prints both and the
ratios. It also checks that `convoy tokenize` gives exactly the ids of `tokenizers` on the whole file.

Without --input, it writes a corpus of --corpus-mb MB of mixed text found on this machine (Python sources,
documentation and license texts, which mix code and prose) plus generated Unicode text. Without --tokenizer,
it trains a ByteLevel BPE of 50,257 tokens (GPT-2's size, `<|endoftext|>` special) on that corpus with
`tokenizers`, because GPT-2's own vocabulary cannot be downloaded here.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import sysconfig
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402


def make_corpus(path, megabytes, seed=18):
    """Mixed text: Python sources (code and docstrings), docs and licenses, generated multilingual lines."""
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], "/usr/share/common-licenses", "/usr/share/doc"]
    files = []
    for root in roots:
        for pattern in ("**/*.py", "**/*.md", "**/*.rst", "**/*.txt", "**/copyright", "*"):
            files += [f for f in glob.glob(os.path.join(root, pattern), recursive=True) if os.path.isfile(f)]
    files = sorted(set(files))
    rng = random.Random(seed)
    rng.shuffle(files)
    budget = megabytes * 1_000_000
    unicode_lines = [
        "Größe, Straße, naïve café, résumé — “quoted” ‘text’ … ¡hola! ¿qué tal?\n",
        "日本語のテキストと中文文本，한국어 텍스트도 있습니다。\n",
        "Emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 ✓ ★ and Ελληνικά, Русский текст, עברית, العربية, हिन्दी\n",
    ]
    written = 0
    with open(path, "wb") as out:
        for name in files:
            if written >= budget:
                break
            try:
                data = open(name, "rb").read(200_000)
                data.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            out.write(data + b"\n<|endoftext|>\n")
            written += len(data) + 15
            if rng.random() < 0.3:
                line = "".join(rng.choice(unicode_lines) for _ in range(20)).encode()
                out.write(line)
                written += len(line)
    return written


def train_tokenizer(corpus, directory, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([corpus], trainer)
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    return os.path.join(directory, "tokenizer.json")


def load(path):
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            return Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        path = os.path.join(path, "vocab.json")
    if path.endswith("vocab.json") or path.endswith("merges.txt"):
        directory = os.path.dirname(path)
        tok = Tokenizer(models.BPE.from_file(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>"])
        return tok
    return Tokenizer.from_file(path)


def best_of(repetitions, body):
    best = float("inf")
    result = None
    for _ in range(repetitions):
        start = time.perf_counter()
        result = body()
        best = min(best, time.perf_counter() - start)
    return best, result


PARALLEL_CHILD = """
import sys, time
from tokenizers import Tokenizer
sys.path.insert(0, {script_dir!r})
from tokenizer_bench import load
import os
os.environ["TOKENIZERS_PARALLELISM"] = "true"  # importing tokenizer_bench turned it off
tok = load({tokenizer!r})
lines = open({input!r}, encoding="utf-8").read().splitlines(keepends=True)
tok.encode_batch(lines[:1000], add_special_tokens=False)
best = float("inf")
for _ in range({repetitions}):
    start = time.perf_counter()
    tok.encode_batch(lines, add_special_tokens=False)
    best = min(best, time.perf_counter() - start)
print(best)
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", help="tokenizer.json, vocab.json or a directory (default: train a 50k BPE)")
    parser.add_argument("--input", help="text file (default: make a corpus)")
    parser.add_argument("--work", default="/tmp/convoy-tokenizer-bench", help="where a made corpus and tokenizer go")
    parser.add_argument("--corpus-mb", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--convoy", default=".build/release/convoy")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.makedirs(args.work, exist_ok=True)
    input_path = args.input or os.path.join(args.work, f"corpus-{args.corpus_mb}mb.txt")
    if not args.input and not os.path.exists(input_path):
        size = make_corpus(input_path, args.corpus_mb)
        print(f"made {input_path} ({size} bytes)", file=sys.stderr)
    tokenizer_path = args.tokenizer or os.path.join(args.work, f"bpe-{args.vocab_size}", "tokenizer.json")
    if not args.tokenizer and not os.path.exists(tokenizer_path):
        start = time.perf_counter()
        train_tokenizer(input_path, os.path.dirname(tokenizer_path), args.vocab_size)
        print(f"trained {tokenizer_path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    tok = load(tokenizer_path)
    data = open(input_path, "rb").read()
    text = data.decode("utf-8")
    lines = text.splitlines(keepends=True)
    whole_seconds, encoding = best_of(args.repetitions, lambda: tok.encode(text, add_special_tokens=False))
    hf_ids = encoding.ids
    batch_seconds, _ = best_of(args.repetitions, lambda: tok.encode_batch(lines, add_special_tokens=False))

    child = PARALLEL_CHILD.format(script_dir=os.path.dirname(os.path.abspath(__file__)), tokenizer=tokenizer_path,
                                  input=input_path, repetitions=args.repetitions)
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS=str(args.threads))
    parallel_seconds = float(subprocess.run([sys.executable, "-c", child], env=environment, check=True,
                                            capture_output=True, text=True).stdout.strip())

    bench = subprocess.run([args.convoy, "bench", "tokenize", "--tokenizer", tokenizer_path, "--input", input_path,
                            "--threads", str(args.threads), "--repetitions", str(args.repetitions), "--json"],
                           check=True, capture_output=True, text=True)
    convoy = json.loads(bench.stdout.strip().splitlines()[-1])
    convoy_ids = json.loads(subprocess.run([args.convoy, "tokenize", "--tokenizer", tokenizer_path, "--json"], input=data,
                                           check=True, capture_output=True).stdout)
    identical = convoy_ids == hf_ids
    first_difference = None if identical else next((i for i, (a, b) in enumerate(zip(convoy_ids, hf_ids)) if a != b), min(len(convoy_ids), len(hf_ids)))

    n = len(data)
    rows = [
        ("tokenizers, 1 thread, whole file", n / whole_seconds),
        ("tokenizers, 1 thread, encode_batch of lines", n / batch_seconds),
        (f"tokenizers, encode_batch, {args.threads} threads", n / parallel_seconds),
        ("convoy, 1 thread", convoy["single_thread_bytes_per_second"]),
        (f"convoy, {convoy['threads']} threads ({convoy['chunks']} chunks)", convoy["parallel_bytes_per_second"]),
    ]
    print(f"{input_path}: {n} bytes, {len(hf_ids)} tokens; tokenizer {tokenizer_path} (vocabulary {tok.get_vocab_size()}); best of {args.repetitions}")
    for name, rate in rows:
        print(f"{name:48s} {rate / 1e6:8.2f} MB/s")
    single_ratio = convoy["single_thread_bytes_per_second"] / (n / whole_seconds)
    parallel_ratio = convoy["parallel_bytes_per_second"] / (n / parallel_seconds)
    print(f"convoy / tokenizers, 1 thread: x{single_ratio:.2f}; parallel: x{parallel_ratio:.2f}")
    print(f"ids identical to tokenizers on the whole file: {identical}" + ("" if identical else f" (first difference at token {first_difference})"))
    if args.json:
        print(json.dumps({
            "input": input_path, "bytes": n, "tokens": len(hf_ids), "tokenizer": tokenizer_path, "threads": args.threads,
            "tokenizers_single_whole_bytes_per_second": n / whole_seconds,
            "tokenizers_single_batch_bytes_per_second": n / batch_seconds,
            "tokenizers_parallel_batch_bytes_per_second": n / parallel_seconds,
            "convoy": convoy, "convoy_over_tokenizers_single": single_ratio, "convoy_over_tokenizers_parallel": parallel_ratio,
            "ids_identical": identical,
        }, sort_keys=True))
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
