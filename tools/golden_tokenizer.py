"""Golden part "tokenizer": a BLOOM-pipeline tokenizer trained by HF `tokenizers`, and its ids.

Writes (the test corpus first, since it is an input of the golden ids):

    tests/data/tokenizer_corpus.json   the committed test corpus: a JSON list of strings (a few lines
                                       of every UDHR language, some tinyshakespeare, an adversarial list)
    tests/golden/tokenizer.json        HF BpeTrainer, vocab 8000, on UDHR + half of tinyshakespeare,
                                       with BLOOM's exact pre-tokenizer / decoder / special tokens
    tests/golden/tokenizer_ids.npz     ids (int32, all lines concatenated), offsets (int64, L+1),
                                       decode_ids / decode_offsets / decode_text(_skip): random id
                                       runs and HF's decode of them as JSON text (invalid UTF-8
                                       included), meta (JSON text)

Source data: ../shared/data/udhr.jsonl and tinyshakespeare.txt (see tests/data/README.md), or
`MINIBLOOM_DATA` pointing at a directory holding them. Deterministic: no randomness except the
seeded decode samples; HF's trainer is deterministic for a fixed input.
"""

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MINIBLOOM_DATA", ROOT.parent / "shared" / "data"))
CORPUS = ROOT / "tests" / "data" / "tokenizer_corpus.json"
VOCAB_SIZE = 8000
SPLIT_REGEX = " ?[^(\\s|[.,!?…。，、।۔،])]+"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def adversarial_lines() -> list:
    """Strings aimed at the corners of BLOOM's pre-tokenizer, added-token matching and BPE."""
    punct = ".,!?…。，、।۔،"
    ws = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
    lines = [
        "",
        " ",
        "  ",
        "don't can't I'm we've they'll she'd it's O'Neil rock'n'roll",
        "state-of-the-art well-known --double-dash- -leading trailing-",
        "3.14 1,000,000 12345 apples abc123 0x1F 1e-9 -42 +7 ½ ² ٣٤٥ १२३",
        "foo:bar;baz http://example.com/a?b=c&d=e#frag user@mail.org 10:30",
        "a  b   c    d\t\te\n\nf\r\ng \n \n h",
        "   leading spaces and trailing spaces   ",
        "\n\n\nnewlines only around\n\n",
        "tabs\tin\tthe\tmiddle \t mixed \t\t",
        "(hello) [world] {braces} <angle> |pipe| a|b (a|b) ((nested)) )( ||",
        "Hello... What?! Really?? No!!! Wait…  Yes.",
        "".join(f"x{p}y {p} {p}{p}" for p in punct),
        "".join(f"a{w}b" for w in ws),
        "U+001C-001F are not whitespace: a\x1cb\x1dc\x1ed\x1ff \x1c \x1f",
        "control chars: \x00\x01\x07\x08\x1b\x7f\x80\x9f end",
        "zero width: a\u200bb a\u200cb a\u200db a\u2060b \ufeffbom \u180emongolian",
        "你好，世界。我们、他们！真的？",
        "日本語の文章です。カタカナ、ひらがな。",
        "हिन्दी वाक्य। दूसरा वाक्य। १२३",
        "اردو جملہ۔ دوسرا، تیسرا؟",
        "العربية، جملة. سؤال؟",
        "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇩🇪 ❤️ ⌚",
        "combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0327\u0336a\u0363l\u036bg\u0350o \u0301alone",
        "<s>starts</s>ends<pad><unk> mid<s>word</s>x <s> </s> <pad> <unk>",
        "almost specials: <s <s/> </ s> <pa d> <unk <<s>> <</s>/s>",
        "</s></s></s><s><s>",
        "special<s>inside</s>words<pad>too",
        "   <s>   ",
        "ﬁ ligature, ß, İstanbul, ǅ, ΣΑΣ, ﬀ ＦＵＬＬＷＩＤＴＨ １２３",
        "\U0001f600" * 5 + "a" * 50 + " " * 30 + "!" * 20,
        "a" * 300,
        " " * 100,
        "x" + "\n" * 40 + "y",
        "mixed scripts: latinКириллицаελληνικά中文עבריתاردو",
        "right-to-left: שלום עולם! مرحبا بالعالم",
        "quotes: «guillemets» „German“ “curly” ‘single’ 「括弧」 『二重』",
        "math: ∀x∈ℝ, x² ≥ 0 ⇒ √x² = |x| ∑∫∂",
        "private use \ue000\uf8ff and high plane \U00010348\U0001d11e\U000e0001",
        "line\u2028separator\u2029paragraph\x85nel",
        "ends with space ",
        " starts with space",
        ".",
        "…",
        "|",
        "(",
        " (",
        " .",
        "a .b",
    ]
    return lines


def build_corpus() -> list:
    """A few lines of every UDHR language, 60 five-line tinyshakespeare chunks, the adversarial list."""
    lines = []
    with open(DATA / "udhr.jsonl", encoding="utf-8") as f:
        for row in f:
            text_lines = json.loads(row)["text"].split("\n")
            lines.append(
                "\n".join(text_lines[:3])[:400]
            )  # title, preamble heading, first paragraph
            lines.append(text_lines[len(text_lines) // 2][:300])  # an article from the middle
    shakespeare = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
    for start in range(0, 40000, 40000 // 60):
        lines.append("\n".join(shakespeare[start : start + 5]))
    return lines + adversarial_lines()


def training_texts() -> list:
    """UDHR (every language, full text) + the first half of tinyshakespeare."""
    with open(DATA / "udhr.jsonl", encoding="utf-8") as f:
        texts = [json.loads(row)["text"] for row in f]
    shakespeare = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return texts + [shakespeare[: len(shakespeare) // 2]]


def train_reference(texts, vocab_size):
    """An HF tokenizer with BLOOM's exact pipeline, trained by HF's BpeTrainer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def make(out_dir: Path) -> None:
    import tokenizers

    corpus = build_corpus()
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(CORPUS, corpus)
    corpus_sha = hashlib.sha256(CORPUS.read_bytes()).hexdigest()

    tok = train_reference(training_texts(), VOCAB_SIZE)
    tmp = out_dir / "tokenizer.json.tmp"
    tmp.write_text(
        json.dumps(json.loads(tok.to_str()), ensure_ascii=False), encoding="utf-8"
    )  # compact
    os.replace(tmp, out_dir / "tokenizer.json")

    encoded = [e.ids for e in tok.encode_batch(corpus)]
    offsets = np.cumsum([0] + [len(ids) for ids in encoded]).astype(np.int64)
    ids = np.array([i for ids in encoded for i in ids], dtype=np.int32)

    # Random id runs (any id, specials and out-of-range ones included) and HF's decode of them.
    rng = random.Random(0)
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    runs = [[rng.randrange(n_tokens + 50) for _ in range(rng.randrange(0, 12))] for _ in range(300)]
    runs += [
        [rng.randrange(4, 260) for _ in range(rng.randrange(1, 6))] for _ in range(300)
    ]  # byte tokens: broken UTF-8
    decode_text = [tok.decode(r, skip_special_tokens=False) for r in runs]
    decode_text_skip = [tok.decode(r, skip_special_tokens=True) for r in runs]

    meta = {
        "tokenizers_version": tokenizers.__version__,
        "vocab_size": VOCAB_SIZE,
        "corpus_sha256": corpus_sha,
        "corpus_lines": len(corpus),
        "made_by": "tools/golden_tokenizer.py",
    }
    np.savez_compressed(
        out_dir / "tokenizer_ids.npz",
        ids=ids,
        offsets=offsets,
        decode_ids=np.array([i for r in runs for i in r], dtype=np.int32),
        decode_offsets=np.cumsum([0] + [len(r) for r in runs]).astype(np.int64),
        # JSON text: numpy's fixed-width str arrays would drop trailing "\x00" characters
        decode_text=np.array(json.dumps(decode_text)),
        decode_text_skip=np.array(json.dumps(decode_text_skip)),
        meta=np.array(json.dumps(meta)),
    )
    print(f"  corpus: {len(corpus)} lines, {CORPUS.stat().st_size / 1e6:.2f} MB -> {CORPUS}")
    print(
        f"  tokenizer.json: {tok.get_vocab_size()} tokens; ids: {ids.size} -> {out_dir / 'tokenizer_ids.npz'}"
    )


if __name__ == "__main__":
    make(ROOT / "tests" / "golden")
