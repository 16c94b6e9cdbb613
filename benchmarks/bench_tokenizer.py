"""Tokenizer speed: minibloom vs HF `tokenizers` (single thread) vs `tiktoken`, in one run.

    python benchmarks/bench_tokenizer.py [--data DIR] [--tokenizer tokenizer.json] [--big-vocab 50000]
                                         [--repeats 3] [--contended]

Encodes the full UDHR (every language, texts joined by newlines) + tinyshakespeare, about 7 MB of
UTF-8, with the same tokenizer in all three libraries, checks that all give identical ids, and prints
MB/s and ratios. The tokenizer defaults to the golden one (tests/golden/tokenizer.json: 8000 tokens,
trained by HF on this very data, so pieces merge deeply). To show that the speed holds with a merge
table closer to BLOOM's 250k, the run then trains a second tokenizer (HF BpeTrainer, `--big-vocab`
tokens, same texts and pipeline as the golden one) and times it too.

Times are CPU seconds (time.process_time; the median of `--repeats` rounds, the three libraries
taking turns in each round and alternating which goes first, benchmarks/common.py's interleave),
so that other processes on a shared machine count less. The machine line (CPU, load average,
busy process or not) is printed at the start and the end; `--contended` runs beside one busy
process. Every encoder here runs on one thread (`--threads` only sets the thread environment).

- minibloom: `encode` on one long string, and `encode_batch` over lines; the first call's cost is
  measured in fresh processes, once compiling the numba kernels (empty NUMBA_CACHE_DIR) and once
  loading them from numba's on-disk cache (the normal case after the first run).
- HF tokenizers: RAYON_NUM_THREADS=1 / TOKENIZERS_PARALLELISM=false; one long string and
  `encode_batch` over lines.
- tiktoken: an `Encoding` built from the same ranks (token bytes -> id; the trained ids follow merge
  order, which is what tiktoken's rank-based merging needs) and a split pattern equivalent to
  BLOOM's Isolated split (tiktoken drops text between matches, so the pattern also matches gaps).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from common import add_common_args, contended, interleave, machine_line, median, set_threads  # noqa: E402

from minibloom.tokenizer import (  # noqa: E402
    SPLIT_EXCLUDED,  # noqa: E402
    BloomTokenizer,
    bytes_to_unicode,
)


def load_text(data_dir: Path) -> str:
    with open(data_dir / "udhr.jsonl", encoding="utf-8") as f:
        udhr = [json.loads(row)["text"] for row in f]
    return "\n".join(udhr) + "\n" + (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


def timed(fn, *args):
    """(result, CPU seconds) of one call. CPU time (time.process_time), not wall time, because
    the machine is shared: it does not count time spent waiting for a core."""
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def first_call_seconds(tokenizer: Path, cold: bool) -> float:
    """Seconds for the first `encode` in a fresh process (numba compile if cold, cache load if warm)."""
    code = (
        "import time, sys; sys.path.insert(0, %r)\n"
        "from minibloom.tokenizer import BloomTokenizer\n"
        "tok = BloomTokenizer.from_file(%r)\n"
        "t = time.perf_counter(); tok.encode('Hello world'); print(time.perf_counter() - t)\n"
    ) % (str(ROOT), str(tokenizer))
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            env["NUMBA_CACHE_DIR"] = cache
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
    return float(out.stdout.strip().split()[-1])


def tiktoken_encoding(tok: BloomTokenizer):
    """A tiktoken Encoding with the same ranks and a split pattern equivalent to BLOOM's."""
    import tiktoken

    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    specials = {t: i for i, t in enumerate(tok.get_vocabulary()) if i in tok._special_ids}
    ranks = {}
    for token, i in tok._vocab.items():
        if token not in specials:
            ranks[bytes(char_to_byte[c] for c in token)] = i
    excluded = "".join(f"\\x{{{ord(c):x}}}" for c in SPLIT_EXCLUDED)
    excluded_but_space = "".join(f"\\x{{{ord(c):x}}}" for c in SPLIT_EXCLUDED if c != " ")
    # A match: optional space + a run of word chars. A gap: excluded chars, where a space counts only
    # when it does not start a match (is not followed by a word char).
    pattern = f" ?[^{excluded}]+|(?:[{excluded_but_space}]| (?![^{excluded}]))+"
    return tiktoken.Encoding(
        "bloom-bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )


def big_tokenizer(vocab_size: int, directory: Path) -> Path:
    """A BLOOM-pipeline tokenizer with `vocab_size` tokens, trained by HF's BpeTrainer on the same
    texts as the golden one (tools/golden_tokenizer.py), to time a large merge table."""
    sys.path.insert(0, str(ROOT / "tools"))
    from golden_tokenizer import train_reference, training_texts

    path = directory / f"tokenizer-{vocab_size}.json"
    train_reference(training_texts(), vocab_size).save(str(path))
    return path


def compare(tokenizer_path: Path, text: str, lines: list, repeats: int) -> None:
    """Time the three libraries on one tokenizer, interleaved; check identical ids; print MB/s."""
    from tokenizers import Tokenizer

    mb = len(text.encode("utf-8")) / 1e6
    tok = BloomTokenizer.from_file(tokenizer_path)
    tok.encode("warm up")
    hf = Tokenizer.from_file(str(tokenizer_path))
    enc = tiktoken_encoding(tok)
    enc.encode_ordinary("warm up")
    print(
        f"\ntokenizer {tokenizer_path.name}: {tok.vocabulary_size()} tokens "
        f"(CPU seconds, median of {repeats} interleaved rounds)"
    )
    cases = {  # library -> [(row name, function)]
        "minibloom": [
            ("minibloom encode (one string)", lambda: tok.encode(text)),
            ("minibloom encode_batch (lines)", lambda: tok.encode_batch(lines)),
        ],
        "HF tokenizers": [
            ("HF tokenizers encode (one string)", lambda: hf.encode(text).ids),
            ("HF tokenizers encode_batch (lines)", lambda: [e.ids for e in hf.encode_batch(lines)]),
        ],
        "tiktoken": [
            ("tiktoken encode_ordinary (one string)", lambda: enc.encode_ordinary(text)),
            (
                "tiktoken encode_ordinary_batch (lines)",
                lambda: enc.encode_ordinary_batch(lines, num_threads=1),
            ),
        ],
    }
    times = {name: [] for rows in cases.values() for name, _ in rows}
    results = {}
    for _, order in interleave(repeats, cases):
        for library in order:
            for name, fn in cases[library]:
                results[name], t = timed(fn)
                times[name].append(t)
    ids, batch = results["minibloom encode (one string)"], results["minibloom encode_batch (lines)"]
    assert results["HF tokenizers encode (one string)"] == ids, "HF ids differ on the long string"
    assert results["HF tokenizers encode_batch (lines)"] == batch, "HF ids differ on lines"
    assert results["tiktoken encode_ordinary (one string)"] == ids, (
        "tiktoken ids differ (split pattern or ranks not equivalent)"
    )
    assert results["tiktoken encode_ordinary_batch (lines)"] == batch, (
        "tiktoken ids differ on lines"
    )

    print(
        f"all three give identical ids ({len(ids)} tokens, {mb * 1e6 / len(ids):.2f} bytes/token)"
    )
    base = {name: median(ts) for name, ts in times.items()}
    for name, t in base.items():
        print(f"  {name:<40} {t:7.2f} s {mb / t:8.2f} MB/s")
    one, lots = base["minibloom encode (one string)"], base["minibloom encode_batch (lines)"]
    print(
        f"  minibloom / HF tokenizers:  one string {base['HF tokenizers encode (one string)'] / one:5.1f}x, "
        f"lines {base['HF tokenizers encode_batch (lines)'] / lots:5.1f}x   (target >= 5x)"
    )
    print(
        f"  minibloom / tiktoken:       one string {base['tiktoken encode_ordinary (one string)'] / one:5.2f}x, "
        f"lines {base['tiktoken encode_ordinary_batch (lines)'] / lots:5.2f}x  (target >= 0.8x)"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="directory with udhr.jsonl and tinyshakespeare.txt",
    )
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=ROOT / "tests" / "golden" / "tokenizer.json",
        help="tokenizer.json to use",
    )
    ap.add_argument(
        "--big-vocab",
        type=int,
        default=50000,
        help="also train (HF BpeTrainer) and time a tokenizer this large; 0: skip",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved timed rounds of every library (the median counts)",
    )
    ap.add_argument(
        "--skip-first-call",
        action="store_true",
        help="do not time the first call in fresh processes",
    )
    add_common_args(ap, threads=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = "1"  # HF tokenizers on one thread, like the others

    text = load_text(args.data)
    lines = text.split("\n")
    mb = len(text.encode("utf-8")) / 1e6
    with contended(args.contended) as busy:
        print(machine_line(busy), flush=True)
        print(f"corpus: {mb:.2f} MB UTF-8, {len(lines)} lines")
        if not args.skip_first_call:
            print(
                f"minibloom first call: {first_call_seconds(args.tokenizer, cold=True):.2f} s compiling numba, "
                f"{first_call_seconds(args.tokenizer, cold=False):.3f} s from numba's cache"
            )
        compare(args.tokenizer, text, lines, args.repeats)
        if args.big_vocab:
            with tempfile.TemporaryDirectory() as tmp:
                compare(big_tokenizer(args.big_vocab, Path(tmp)), text, lines, args.repeats)
        print(machine_line(busy), flush=True)


if __name__ == "__main__":
    main()
