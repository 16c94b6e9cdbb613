"""Held-out evaluation of a language model on a text file, in bits per byte.

Bits per byte (bpb) compares models with different tokenizers: the total negative log-likelihood
of a text, in bits, divided by the text's UTF-8 byte count. The file is tokenized exactly as the
`train` command tokenizes training data (data.py: documents separated by blank lines, each
ended by `</s>`, which stands in for the blank line), the token stream is cut into consecutive
windows of up to T + 1 tokens overlapping by one, and every token after the first is predicted
from the tokens before it in its window (context restarts at each window):

    bpb = sum over predicted tokens of -ln p(token | window so far)  /  ln 2  /  bytes(file)

The first token of the file is not predicted (no context); on a held-out file of thousands of
tokens that is a negligible undercount, and the report says how many tokens were scored.

Leaves out: sliding-window (strided) evaluation with overlapping context, which scores lower.
"""

import math
import tempfile
from pathlib import Path

import numpy as np

from minibloom import losses
from minibloom.data import load_tokens, tokenize_files
from minibloom.errors import ArgumentError


def evaluate_file(lm, path, sequence_length=128, batch_size=8):
    """Score a text file with `lm` (which must have a tokenizer).

    Returns {"loss" (nats per predicted token), "perplexity", "bits_per_byte", "tokens" (scored),
    "bytes"}.
    """
    if lm.tokenizer is None:
        raise ArgumentError("evaluate: the model has no tokenizer to encode the text with")
    if sequence_length < 1 or batch_size < 1:
        raise ArgumentError(f"evaluate: sequence_length and batch_size must be >= 1, found {sequence_length}, {batch_size}")
    path = Path(path)
    n_bytes = path.stat().st_size if path.is_file() else 0
    with tempfile.TemporaryDirectory() as cache:
        tokens = np.asarray(load_tokens(tokenize_files([path], lm.tokenizer, cache)), dtype=np.int64)  # (N,)
    if len(tokens) < 2 or n_bytes == 0:
        raise ArgumentError(f"evaluate: {path} holds too little text to score (need at least two tokens)")

    T = sequence_length
    starts = range(0, len(tokens) - 1, T)  # window i: tokens [s, s + T] (the last may be shorter)
    nll = 0.0
    scored = 0
    for first in range(0, len(starts), batch_size):
        batch = [tokens[s : s + T + 1] for s in starts[first : first + batch_size]]
        width = max(len(w) for w in batch) - 1
        ids = np.zeros((len(batch), width), dtype=np.int64)  # (B, T) right-padded
        y = np.full((len(batch), width), losses.IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=bool)
        for b, w in enumerate(batch):
            ids[b, : len(w) - 1], y[b, : len(w) - 1], mask[b, : len(w) - 1] = w[:-1], w[1:], True
        logits = lm.predict({"token_ids": ids, "padding_mask": mask})  # (B, T, V)
        batch_nll, _ = losses.softmax_cross_entropy_forward(logits, y, reduction="sum")
        nll += float(batch_nll)
        scored += int(mask.sum())
    loss = nll / scored
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nll / math.log(2) / n_bytes,
        "tokens": scored,
        "bytes": n_bytes,
    }
