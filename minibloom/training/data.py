"""Streaming token datasets for corpora too long to hold as text: tokenize once, then read windows.

    corpus files --tokenize_files--> one token file (uint16/uint32 on disk, + a .json sidecar)
                 --TokenWindows-----> packed windows of T+1 tokens --> shuffled (x, y, w) batches

Reading: `iter_documents(path)` is the one corpus reader of every command (train, evaluate,
train-tokenizer): plain UTF-8 text, where blank lines separate documents, or JSON lines (`.jsonl`),
one document per line's "text" field; either may be compressed (`x.txt.xz`, `x.jsonl.gz`). Bad
input (not UTF-8, a bad JSON line, a line without "text", a corrupt .xz) is an ArgumentError
naming the file and the line or byte offset.

Tokenizing: every document is encoded on its own and followed by `</s>` (BLOOM's
end-of-document marker), so only one document is in memory at a time. The result is written once
(checkpoint.py's atomic writer) and re-used while the corpus files, the reader's rules and the
tokenizer are unchanged (the cache key hashes the files' bytes as stored, their names, the
reader version and a probe encoding of the tokenizer).

Windows: the token stream is cut into consecutive windows of T+1 tokens that overlap by one
token (window i covers tokens [i*T, i*T + T]); x is the first T tokens, y the last T, every
position is a real token (padding_mask all True, sample_weight all 1). This is GPT-2/nanoGPT
style packing: documents run across window boundaries and `</s>` separates them.
The windows are read from an `np.memmap`, so a batch costs B*(T+1) tokens of memory whatever the
corpus size. `split(heldout_fraction)` keeps the last windows apart for evaluation.

Left out: padding-based batching of short separate texts (that is BloomCausalLMPreprocessor's
job), multiple workers, on-the-fly augmentation.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from minibloom.errors import ArgumentError

_PROBE = "Probe: héllo wörld 你好 \n\n  tabs\tand 123."


# ------------------------------------------------------------------------------------------------
# the corpus reader: the one place that turns a corpus file into documents (train, evaluate,
# train-tokenizer all read through it)
# ------------------------------------------------------------------------------------------------

COMPRESSED = (".xz", ".gz")  # read through lzma / gzip, by file name
JSON_LINES = ".jsonl"  # after the compression suffix is removed: x.jsonl, x.jsonl.xz, x.jsonl.gz
READER_VERSION = "documents-v2"  # part of the token cache key: a change of these rules re-tokenizes


def corpus_format(path) -> tuple[str | None, bool]:
    """(compression or None, is JSON lines) of a corpus file, from its name: `x.jsonl.gz` -> (".gz", True)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSED else None
    rest = suffixes[:-1] if compression else suffixes
    return compression, bool(rest) and rest[-1] == JSON_LINES


def _open_binary(path, compression):
    import gzip
    import lzma

    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _lines(path, counts=None):
    """Yield (line number, line without its ending) of a UTF-8 corpus file, decompressed if its
    name ends in .xz / .gz. Line endings are \\n, \\r\\n and \\r, as in Python's text mode. With
    `counts`, counts["bytes"] = the bytes of the (decompressed) text, once it is all read.

    Errors (ArgumentError) name the file: not UTF-8 (with the line and the byte offset), a corrupt
    or truncated .xz / .gz, a read error.
    """
    import lzma
    import zlib

    compression, _ = corpus_format(path)
    text_kind = "decompressed text" if compression else "file"
    offset = number = 0
    try:
        with _open_binary(path, compression) as f:
            for raw in f:
                number += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ArgumentError(
                        f"{path}: not UTF-8 text at line {number} (byte {offset + e.start} of the {text_kind}: "
                        f"{raw[e.start : e.start + 4]!r}); expected UTF-8 (convert the file, e.g. with iconv)"
                    ) from None
                offset += len(raw)
                text = text.replace("\r\n", "\n").replace("\r", "\n")
                for part in text.removesuffix("\n").split("\n"):  # a lone \r ends a line too
                    yield number, part
    except (lzma.LZMAError, EOFError, zlib.error) as e:
        raise ArgumentError(
            f"{path}: not a valid {compression} file ({e}) after {offset} bytes of text; the "
            f"file may be truncated, or not compressed despite its name"
        ) from None
    except OSError as e:  # gzip.BadGzipFile is one; or a read error
        what = f"not a valid {compression} file" if compression else "cannot be read"
        raise ArgumentError(f"{path}: {what} ({getattr(e, 'strerror', None) or e})") from None
    if counts is not None:
        counts["bytes"] = offset


def iter_documents(path, counts: dict | None = None):
    """Yield the documents of a corpus file, one at a time: the rule every command follows.

    - JSON lines (`.jsonl`, `.jsonl.xz`, `.jsonl.gz`): one document per line, the line's "text"
      field (a string; other fields are ignored); blank lines are skipped; a line that is not a
      JSON object with a string "text" is an error naming the file and the line.
    - Any other name is plain UTF-8 text (`.txt.xz` / `.txt.gz` are decompressed first):
      documents are separated by blank lines (lines holding only whitespace); a document is its
      lines joined by "\\n", without the blank lines around it or a final newline.
    Empty documents are skipped. With `counts`, counts["bytes"] is set once the file is read to
    the UTF-8 bytes of the corpus text: the whole (decompressed) file for plain text; the "text"
    fields plus one byte per document (the newline that ends its line) for JSON lines.
    """
    _, jsonl = corpus_format(path)
    if jsonl:
        yield from _json_documents(path, counts)
        return
    lines = []
    for _, line in _lines(path, counts):
        if line.strip():
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _json_documents(path, counts):
    n_bytes = 0
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            reason = (
                "nested too deeply" if isinstance(e, RecursionError) else getattr(e, "msg", str(e))
            )
            raise ArgumentError(
                f"{path}, line {number}: not valid JSON ({reason}); expected one JSON object "
                f'with a "text" field per line'
            ) from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            found = (
                f"a JSON {type(record).__name__}"
                if not isinstance(record, dict)
                else 'no "text" field'
                if "text" not in record
                else f'"text" of type {type(text).__name__}'
            )
            raise ArgumentError(
                f'{path}, line {number}: expected a JSON object with a string "text" field, '
                f"found {found}"
            )
        n_bytes += len(text.encode("utf-8")) + 1
        if text:
            yield text
    if counts is not None:
        counts["bytes"] = n_bytes


def encode_documents(tokenizer, documents, batch_chars: int = 1 << 20):
    """Yield the ids of each document, encoding about `batch_chars` characters per call of the
    tokenizer's `encode_batch` (one kernel call for many documents) when it has one."""
    if not hasattr(tokenizer, "encode_batch"):
        yield from (tokenizer.encode(doc) for doc in documents)
        return
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield from tokenizer.encode_batch(batch)
            batch, size = [], 0
    if batch:
        yield from tokenizer.encode_batch(batch)


def _vocab_size(tokenizer) -> int:
    """The tokenizer's vocabulary size (an attribute or keras' `vocabulary_size()`), 0 if unknown."""
    v = getattr(tokenizer, "vocabulary_size", 0)
    return int((v() if callable(v) else v) or 0)


def _cache_key(paths, tokenizer) -> str:
    """A hash of the corpus files' bytes (compressed as stored), names and order, the reader's rules
    and the tokenizer's behaviour on a probe text."""
    h = hashlib.sha256(READER_VERSION.encode() + b"\0")
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")  # the name says how the file is read (.jsonl, .xz)
        try:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            raise ArgumentError(f"{p}: cannot be read ({e.strerror or e})") from None
    probe = list(tokenizer.encode(_PROBE)) + [tokenizer.end_token_id, _vocab_size(tokenizer)]
    h.update(json.dumps([int(i) for i in probe]).encode())
    return h.hexdigest()[:16]


def _read_meta(path: Path):
    """The sidecar of a token file, or None if it is missing or unreadable (then it is rebuilt)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        n, dtype = meta["num_tokens"], np.dtype(meta["dtype"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if (
        dtype not in (np.uint16, np.uint32)
        or not isinstance(n, int)
        or n < 0
        or path.stat().st_size != n * dtype.itemsize
    ):
        return None
    return meta


def tokenize_files(paths, tokenizer, cache_dir) -> Path:
    """Tokenize corpus files into one token file in `cache_dir` (re-used if already there).

    Every file is read by `iter_documents` (plain text, JSON lines, .xz / .gz of either) and each
    document is followed by `</s>`. Returns the path of the `.tokens` file; its sidecar
    `<same>.json` holds dtype, token count and the source files. Ids are stored as uint16 when the
    largest id fits, else uint32. A cache that cannot be written raises CheckpointError naming it.
    """
    from minibloom.arguments import check_input_file
    from minibloom.io.files import atomic_write, write_bytes_atomic

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [check_input_file("data", p) for p in paths]
    if not paths:
        raise ArgumentError("data: expected at least one corpus file")
    cache_dir = Path(cache_dir)
    key = _cache_key(paths, tokenizer)
    out = cache_dir / f"corpus-{key}.tokens"
    meta_path = out.with_suffix(".json")
    if out.is_file() and _read_meta(out) is not None:
        return out
    vocab = _vocab_size(tokenizer)
    dtype = np.uint16 if 0 < vocab <= 65536 else np.uint32
    n = 0

    def write(f):
        nonlocal n
        for p in paths:
            for doc_ids in encode_documents(tokenizer, iter_documents(p)):
                ids = np.asarray(list(doc_ids) + [tokenizer.end_token_id], dtype=np.int64)
                if ids.max() > np.iinfo(dtype).max:
                    raise ArgumentError(
                        f"data: token id {ids.max()} does not fit {np.dtype(dtype).name}"
                    )
                f.write(ids.astype(dtype).tobytes())
                n += len(ids)

    atomic_write(out, write)
    meta = {
        "dtype": np.dtype(dtype).name,
        "num_tokens": n,
        "sources": [str(p) for p in paths],
        "key": key,
    }
    write_bytes_atomic(meta_path, json.dumps(meta, indent=1).encode("utf-8"))
    return out


def load_tokens(path) -> np.ndarray:
    """Memory-map a token file written by `tokenize_files` (read-only, (N,) uint16/uint32)."""
    path = Path(path)
    meta = _read_meta(path)
    if meta is None:
        raise ArgumentError(
            f"{path}: not a token file written by tokenize_files (its .json sidecar is missing, "
            f"unreadable or does not match the file size)"
        )
    if meta["num_tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))


class TokenWindows:
    """Packed windows over a token array (usually a memmap), batched for training or evaluation.

    Args:
        tokens: (N,) integer array of the whole stream.
        sequence_length: T; each window holds T + 1 tokens.
        start, stop: the range of window indices this dataset covers (default: all windows).
    """

    def __init__(self, tokens, sequence_length, start=0, stop=None):
        from minibloom.arguments import check_int

        self.tokens = tokens
        self.sequence_length = check_int("sequence_length", sequence_length, lo=1)
        total = max(0, (len(tokens) - 1) // self.sequence_length)
        self.start = int(start)
        self.stop = total if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= total:
            raise ArgumentError(
                f"windows [{start}, {stop}) outside the {total} windows of the token stream"
            )

    @classmethod
    def from_files(cls, paths, tokenizer, sequence_length, cache_dir):
        """Tokenize (or re-use the cached tokens of) corpus files and window them."""
        return cls(load_tokens(tokenize_files(paths, tokenizer, cache_dir)), sequence_length)

    def __len__(self):
        return self.stop - self.start

    @property
    def num_tokens(self):
        """Target tokens covered (T per window)."""
        return len(self) * self.sequence_length

    def split(self, heldout_fraction):
        """(train, heldout): the last `heldout_fraction` of the windows (at least one) are held out."""
        from minibloom.arguments import check_float

        heldout_fraction = check_float(
            "heldout_fraction", heldout_fraction, 0.0, 1.0, lo_open=True, hi_open=True
        )
        n_held = max(1, int(round(len(self) * heldout_fraction)))
        if n_held >= len(self):
            raise ArgumentError(
                f"data: {len(self)} windows of {self.sequence_length + 1} tokens are too few to hold out "
                f"{heldout_fraction:.0%}; use more text or a shorter --seq-len"
            )
        cut = self.stop - n_held
        T = self.sequence_length
        return TokenWindows(self.tokens, T, self.start, cut), TokenWindows(
            self.tokens, T, cut, self.stop
        )

    def num_batches(self, batch_size, drop_last=True):
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batch(self, window_indices):
        """(x, y, sample_weight) for the given window indices (relative to this dataset)."""
        T = self.sequence_length
        rows = np.stack(
            [
                np.asarray(self.tokens[(self.start + i) * T : (self.start + i) * T + T + 1])
                for i in window_indices
            ]
        ).astype(np.int64)  # (B, T+1)
        x = {
            "token_ids": rows[:, :-1],
            "padding_mask": np.ones((len(rows), T), dtype=bool),
        }  # (B, T)
        return x, rows[:, 1:], np.ones((len(rows), T), dtype=np.float32)

    def order(self, shuffle, seed, epoch):
        """The window order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
        if not shuffle:
            return np.arange(len(self))
        return np.random.default_rng([int(seed), int(epoch)]).permutation(len(self))

    def batches(self, batch_size, shuffle=True, seed=0, epoch=0, start_batch=0, drop_last=True):
        """Yield (x, y, sample_weight) batches of one epoch, from batch number `start_batch` on.

        The order depends only on (seed, epoch), so a resumed run continues with exactly the
        batches an uninterrupted run would have seen.
        """
        from minibloom.arguments import check_int

        check_int("batch_size", batch_size, lo=1)
        order = self.order(shuffle, seed, epoch)
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):
            yield self.batch(order[b * batch_size : (b + 1) * batch_size])
