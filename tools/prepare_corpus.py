"""Unpack data/*.xz into the plain-text files the shipped model is trained and evaluated on.

    python tools/prepare_corpus.py runs/corpus

writes, in OUT_DIR:
  train.txt                 the first 90% of each UDHR translation + the first 90% of tinyshakespeare
  train_shakespeare.txt     the first 90% of tinyshakespeare alone (to up-weight it in a mixture)
  heldout_shakespeare.txt   the last 10% of tinyshakespeare's lines (the bits-per-byte figure)
  heldout_udhr.txt          the last 10% of the paragraphs of each UDHR translation

Documents are separated by blank lines; the split is deterministic (no randomness), so the same
files come out on every machine. Standard library only.
"""

import json
import lzma
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_FRACTION = 0.10


def _split_lines(text: str):
    """(first 90%, last 10%) of a text's lines; the cut falls on a line boundary."""
    lines = text.splitlines(keepends=True)
    cut = int(len(lines) * (1 - HELDOUT_FRACTION))
    return "".join(lines[:cut]), "".join(lines[cut:])


def split_corpus(data_dir: Path):
    """Return (train, train_shakespeare, heldout_shakespeare, heldout_udhr) as strings."""
    with lzma.open(data_dir / "tinyshakespeare.txt.xz", "rt", encoding="utf-8") as f:
        shakespeare_train, shakespeare_heldout = _split_lines(f.read())

    udhr_train, udhr_heldout = [], []
    with lzma.open(data_dir / "udhr.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            train, heldout = _split_lines(
                json.loads(line)["text"].strip() + "\n"
            )  # no blank lines inside
            udhr_train.append(train)
            udhr_heldout.append(heldout)
    # A blank line between translations makes each one a document of its own for `train`.
    train = "\n".join(udhr_train) + "\n" + shakespeare_train
    return train, shakespeare_train, shakespeare_heldout, "\n".join(udhr_heldout)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    train, train_shakespeare, heldout_shakespeare, heldout_udhr = split_corpus(ROOT / "data")
    files = {
        "train.txt": train,
        "train_shakespeare.txt": train_shakespeare,
        "heldout_shakespeare.txt": heldout_shakespeare,
        "heldout_udhr.txt": heldout_udhr,
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"{out / name}: {len(text.encode('utf-8')):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
