#!/usr/bin/env python3
"""Makes the byte-level BPE fixture for Convoy's tokenizer tests with Hugging Face `tokenizers`.

Writes into Tests/ConvoyTrainTests/Fixtures/bpe-tiny/:
  tokenizer.json                  a small ByteLevel BPE (GPT-2's pre-tokenizer, `<|endoftext|>` special),
                                  trained here on mixed text; merges in the pair form `[a, b]`
  tokenizer-string-merges.json    the same tokenizer with merges in the older "a b" string form
  vocab.json, merges.txt          the same model in GPT-2's two-file form
  encodings.json                  test inputs (hex bytes) and the ids `tokenizers` gives them
  variants.json                   edits of tokenizer.json (added tokens with lstrip, rstrip, single_word and
                                  normalized; ignore_merges; use_regex false) and `tokenizers`' ids under each

Valid UTF-8 inputs are encoded with `Tokenizer.encode`. `tokenizers` cannot take invalid UTF-8 (it encodes
Python strings), so for inputs with invalid bytes the script applies Convoy's documented rule using the
pieces of `tokenizers` itself: every byte that is not part of a valid UTF-8 sequence counts as one
character of the "other" class (the class of U+FFFD, which the script substitutes to pre-tokenise), and each
piece's original bytes go through `tokenizers`' BPE model. The script checks that this path gives exactly
`Tokenizer.encode`'s ids on every valid input first.

Usage: python3 scripts/make_tokenizer_fixture.py [OUTPUT_DIR]
"""
import codecs
import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL = "<|endoftext|>"


def bytes_to_unicode():
    """GPT-2's byte-to-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_CHAR = bytes_to_unicode()


def one_replacement_per_byte(error):
    return ("\ufffd" * (error.end - error.start), error.end)


codecs.register_error("convoy-per-byte", one_replacement_per_byte)


def training_text(rng):
    prose = [
        "The quick brown fox jumps over the lazy dog. It's what they'd said they'll do, and we've done it.",
        "I'm sure you're right; she's gone, hasn't she? Don't worry -- we'll manage.",
        "In 1969, 600 million people watched; 3.14159 is pi, 2.71828 is e, and 1,000,000 is a lot.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.",
    ]
    code = [
        "def train(model, data, steps=100):\n    for step in range(steps):\n        loss = model(data)\n        loss.backward()\n",
        "    if (x != nullptr && y >= 0) {\n        return x->value + y;\n    }\n",
        "let tokens = tokenizer.encode(bytes: Array(text.utf8))\n\t\tprint(tokens.count)\n",
        "SELECT id, name FROM users WHERE age > 21 ORDER BY name;  -- comment\n",
    ]
    unicode = [
        "Größe, Straße, naïve café, résumé — “quoted” ‘text’ … ¡hola! ¿qué?",
        "日本語のテキストと中文文本，한국어 텍스트도 있습니다。",
        "Emoji: 😀🎉👍🏽 family: 👨‍👩‍👧 flags: 🇫🇷🇯🇵 ✓ ★",
        "Combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 Ελληνικά Русский текст עברית العربية",
        "Digits: ١٢٣ ४५६ 一二三 ½ ² Ⅻ 10²⁰",
    ]
    spaces = ["    ", "\t\t", "\n\n\n", "  \n  ", " \u00a0 ", "\u3000", "\r\n"]
    parts = []
    for _ in range(400):
        kind = rng.random()
        if kind < 0.35:
            parts.append(rng.choice(prose))
        elif kind < 0.65:
            parts.append(rng.choice(code))
        elif kind < 0.9:
            parts.append(rng.choice(unicode))
        else:
            parts.append(rng.choice(spaces) * rng.randint(1, 20))
        if rng.random() < 0.1:
            parts.append(SPECIAL)
    return "".join(parts)


def random_string(rng):
    pool = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(".,;:!?-_()[]{}<>|/\\\"'`~@#$%^&*+=")
        + [" "] * 12 + ["\t", "\n", "\r", "\u00a0", "\u3000", "\u2028", "\u0085", "\x1c", "\x0b"]
        + list("éüßñçøåæœ日本語中文한국어😀🎉👍🏽ΑβγДжЯ١٢३४½²Ⅻ€£¥—…“”") + ["\u0301", "\u0308", "\u200d", "\ufeff", "\ufffd"]
    )
    pieces = []
    for _ in range(rng.randint(0, 60)):
        r = rng.random()
        if r < 0.05:
            pieces.append(SPECIAL)
        elif r < 0.08:
            pieces.append(SPECIAL[: rng.randint(1, len(SPECIAL) - 1)])
        elif r < 0.14:
            pieces.append(rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "''s", " 's", "'x"]))
        elif r < 0.18:
            pieces.append(rng.choice([" ", "\t", "\n", "\u00a0"]) * rng.randint(2, 40))
        else:
            pieces.append(rng.choice(pool))
    return "".join(pieces)


def split_special(data):
    """Splits bytes at `<|endoftext|>` (leftmost first, as `tokenizers` matches added tokens)."""
    marker = SPECIAL.encode()
    out = []
    start = 0
    while True:
        found = data.find(marker, start)
        if found < 0:
            out.append((False, data[start:]))
            return out
        out.append((False, data[start:found]))
        out.append((True, marker))
        start = found + len(marker)


def encode_bytes(tok, data):
    """The ids of any bytes under Convoy's rule (see the module docstring), from `tokenizers`' own parts."""
    special_id = tok.token_to_id(SPECIAL)
    ids = []
    for is_special, segment in split_special(data):
        if is_special:
            ids.append(special_id)
            continue
        if not segment:
            continue
        text = segment.decode("utf-8", errors="convoy-per-byte")
        # The byte range of each character of `text` in `segment`.
        ranges = []
        position = 0
        index = 0
        while index < len(text):
            ch = text[index]
            width = len(ch.encode("utf-8"))
            if ch == "\ufffd" and segment[position:position + 3] != b"\xef\xbf\xbd":
                width = 1
            ranges.append((position, position + width))
            position += width
            index += 1
        assert position == len(segment)
        for _, (start, end) in tok.pre_tokenizer.pre_tokenize_str(text):
            piece = segment[ranges[start][0]:ranges[end - 1][1]]
            mapped = "".join(BYTE_CHAR[b] for b in piece)
            ids.extend(t.id for t in tok.model.tokenize(mapped))
    return ids


VARIANTS = [
    {"name": "added tokens", "added_tokens": [
        {"id": 757, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False, "special": True},
        {"id": 758, "content": "<r>", "single_word": False, "lstrip": False, "rstrip": True, "normalized": False, "special": True},
        {"id": 759, "content": "[SW]", "single_word": True, "lstrip": False, "rstrip": False, "normalized": False, "special": True},
        {"id": 760, "content": "hello", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
        {"id": 761, "content": "<mask>s", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
        {"id": 762, "content": "<|endoftext|>!", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True},
    ]},
    {"name": "ignore merges", "ignore_merges": True},
    {"name": "no regex", "use_regex": False},
]


def variant_document(base, variant):
    document = json.loads(json.dumps(base))
    document["added_tokens"] += variant.get("added_tokens", [])
    if "ignore_merges" in variant:
        document["model"]["ignore_merges"] = variant["ignore_merges"]
    if "use_regex" in variant:
        document["pre_tokenizer"]["use_regex"] = variant["use_regex"]
    return document


def write_variants(out, rng):
    """Edits of tokenizer.json that exercise rarer options, and `tokenizers`' ids under each."""
    with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
        base = json.load(f)
    texts = [
        "a <mask> b", "a   <mask>b", "<mask>", "  <mask>  ", "x<r>   y", "<r>\n\n z", "[SW] ok", "a[SW]b", "a [SW] b", "é[SW]",
        "[SW]1", "hello world", "sayhello", "<mask>s and <mask> s", "<|endoftext|>! <|endoftext|>", "Hello hello HELLO",
        "the theory of them", "  the   thermal\tthe", "x <mask>\t<r> [SW]hello",
    ]
    for _ in range(12):
        texts.append(random_string(rng).replace("<|end", rng.choice(["<mask>", "<r>", " [SW] ", "hello", "<|end"])))
    variants = []
    for variant in VARIANTS:
        document = variant_document(base, variant)
        tok = Tokenizer.from_str(json.dumps(document))
        cases = [{"hex": t.encode().hex(), "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
        variants.append({key: value for key, value in variant.items()} | {"cases": cases})
    with open(os.path.join(out, "variants.json"), "w", encoding="utf-8") as f:
        json.dump(variants, f)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "Tests/ConvoyTrainTests/Fixtures/bpe-tiny")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(18)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1 + 256 + 500,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([training_text(rng) for _ in range(8)], trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    tok.model.save(out)

    # The older string form of the merges, as tokenizers before 0.20 and GPT-2's hub file write them.
    with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
        document = json.load(f)
    document["model"]["merges"] = [" ".join(pair) for pair in document["model"]["merges"]]
    with open(os.path.join(out, "tokenizer-string-merges.json"), "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=False)

    texts = [
        "", " ", "  ", "a", "Hello world", "Hello  world", "Hello   world!", "   leading", "trailing   ",
        "It's, I'm, you're, we've, they'll, he'd, don't, DON'T, ''s, ' s", "x\t\ty", "x \ty", "x\t y", "a\n\nb",
        "  \n  indented\n\tcode", "1234567890 3.14 1,000", "naïve café", "日本語のテキスト", "😀🎉👍🏽👨‍👩‍👧",
        "e\u0301\u0301\u0301", SPECIAL, "a" + SPECIAL + "b", " " + SPECIAL + " ", SPECIAL + SPECIAL, "<|endoftext", "<|endoftext|",
        " " * 300 + "x", "\n" * 100, "word " * 50, "\u00a0\u00a0x", "\x1c\x1c x", "\u3000\u3000漢",
        "".join(training_text(random.Random(7))[:2000]),
    ]
    for _ in range(140):
        texts.append(random_string(rng))
    cases = []
    for text in texts:
        data = text.encode("utf-8")
        ids = tok.encode(text).ids
        assert encode_bytes(tok, data) == ids, f"the per-piece path disagrees with encode on {text!r}"
        cases.append({"hex": data.hex(), "ids": ids})

    invalid = [b"\xff", b"\x80abc", b"a\xc3", b"\xe2\x82", b"\xe2\x82 x", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf5\x80\x80\x80",
               b"caf\xe9 au lait", b"  \xfe\xfe  ", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80\xf0\x9f", b"it\xff's", b"<|endo\xfftext|>",
               b"\xff<|endoftext|>\xff", b"12\x8034", b"\xef\xbf\xbd\xff"]
    for _ in range(50):
        data = bytearray(random_string(rng).encode("utf-8"))
        for _ in range(rng.randint(1, 6)):
            position = rng.randint(0, len(data))
            data[position:position] = bytes([rng.randint(0x80, 0xff)])
        invalid.append(bytes(data))
    for data in invalid:
        cases.append({"hex": data.hex(), "ids": encode_bytes(tok, data)})

    write_variants(out, rng)

    with open(os.path.join(out, "encodings.json"), "w", encoding="utf-8") as f:
        json.dump({"special": SPECIAL, "special_id": tok.token_to_id(SPECIAL), "vocab_size": tok.get_vocab_size(), "cases": cases}, f)
    total = sum(os.path.getsize(os.path.join(out, name)) for name in os.listdir(out))
    print(f"wrote {len(cases)} cases, vocab {tok.get_vocab_size()}, {total} bytes in {out}")


if __name__ == "__main__":
    main()
