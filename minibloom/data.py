"""Streaming token datasets for corpora too long to hold as text: tokenize once, then read windows.

    corpus files --tokenize_files--> one token file (uint16/uint32 on disk, + a .json sidecar)
                 --TokenWindows-----> packed windows of T+1 tokens --> shuffled (x, y, w) batches

Tokenizing: each file is read as documents separated by blank lines; every document is encoded
on its own and followed by `</s>` (BLOOM's end-of-document marker), so only one document is in
memory at a time. The result is written once (temp file + os.replace) and re-used while the
corpus files and the tokenizer are unchanged (the cache key hashes the files' bytes and a probe
encoding of the tokenizer).

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
import tempfile
from pathlib import Path

import numpy as np

from minibloom.errors import ArgumentError

_PROBE = "Probe: héllo wörld 你好 \n\n  tabs\tand 123."


def _documents(path):
    """Yield the blank-line-separated documents of a UTF-8 text file, one at a time."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\n")


def _encode_documents(tokenizer, documents, batch_chars: int = 1 << 20):
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
    """A hash of the corpus bytes, the file order and the tokenizer's behaviour on a probe text."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    probe = list(tokenizer.encode(_PROBE)) + [tokenizer.end_token_id, _vocab_size(tokenizer)]
    h.update(json.dumps([int(i) for i in probe]).encode())
    return h.hexdigest()[:16]


def tokenize_files(paths, tokenizer, cache_dir) -> Path:
    """Tokenize corpus files into one token file in `cache_dir` (re-used if already there).

    Returns the path of the `.tokens` file; its sidecar `<same>.json` holds dtype, token count and
    the source files. Ids are stored as uint16 when the largest id fits, else uint32.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ArgumentError("data: expected at least one corpus file")
    for p in paths:
        if not p.is_file():
            raise ArgumentError(f"data: corpus file {p} does not exist")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(paths, tokenizer)
    out = cache_dir / f"corpus-{key}.tokens"
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        return out
    vocab = _vocab_size(tokenizer)
    dtype = np.uint16 if 0 < vocab <= 65536 else np.uint32
    n = 0
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for p in paths:
                for doc_ids in _encode_documents(tokenizer, _documents(p)):
                    ids = np.asarray(list(doc_ids) + [tokenizer.end_token_id], dtype=np.int64)
                    if ids.max() > np.iinfo(dtype).max:
                        raise ArgumentError(f"data: token id {ids.max()} does not fit {np.dtype(dtype).name}")
                    f.write(ids.astype(dtype).tobytes())
                    n += len(ids)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    meta = {"dtype": np.dtype(dtype).name, "num_tokens": n, "sources": [str(p) for p in paths], "key": key}
    tmp_meta = meta_path.with_name(f".{meta_path.name}.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, meta_path)
    return out


def load_tokens(path) -> np.ndarray:
    """Memory-map a token file written by `tokenize_files` (read-only, (N,) uint16/uint32)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
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
        if sequence_length < 1:
            raise ArgumentError(f"sequence_length: expected >= 1, found {sequence_length}")
        self.tokens = tokens
        self.sequence_length = int(sequence_length)
        total = max(0, (len(tokens) - 1) // self.sequence_length)
        self.start = int(start)
        self.stop = total if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= total:
            raise ArgumentError(f"windows [{start}, {stop}) outside the {total} windows of the token stream")

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
        if not 0.0 < heldout_fraction < 1.0:
            raise ArgumentError(f"heldout_fraction: expected 0 < f < 1, found {heldout_fraction}")
        n_held = max(1, int(round(len(self) * heldout_fraction)))
        if n_held >= len(self):
            raise ArgumentError(f"data: {len(self)} windows of {self.sequence_length + 1} tokens are too few to hold out "
                                f"{heldout_fraction:.0%}; use more text or a shorter --seq-len")
        cut = self.stop - n_held
        T = self.sequence_length
        return TokenWindows(self.tokens, T, self.start, cut), TokenWindows(self.tokens, T, cut, self.stop)

    def num_batches(self, batch_size, drop_last=True):
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batch(self, window_indices):
        """(x, y, sample_weight) for the given window indices (relative to this dataset)."""
        T = self.sequence_length
        rows = np.stack([np.asarray(self.tokens[(self.start + i) * T: (self.start + i) * T + T + 1])
                         for i in window_indices]).astype(np.int64)  # (B, T+1)
        x = {"token_ids": rows[:, :-1], "padding_mask": np.ones((len(rows), T), dtype=bool)}  # (B, T)
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
        if batch_size < 1:
            raise ArgumentError(f"batch_size: expected >= 1, found {batch_size}")
        order = self.order(shuffle, seed, epoch)
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):
            yield self.batch(order[b * batch_size: (b + 1) * batch_size])
