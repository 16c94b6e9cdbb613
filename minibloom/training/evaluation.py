"""Held-out evaluation of a language model on a text file, in bits per byte.

Bits per byte (bpb) compares models with different tokenizers: the total negative log-likelihood
of a text, in bits, divided by the text's UTF-8 byte count (for plain text the whole decompressed file;
for JSON lines the "text" fields plus one byte per document). The file is read and tokenized exactly
as the `train` command reads training data (`minibloom.training.data.iter_documents`: plain text with
blank lines between documents, JSON lines with a "text" field, or .xz / .gz of either; each
document ended by `</s>`, which stands in for the blank line), the token stream is cut into consecutive
windows of up to T + 1 tokens overlapping by one, and every token after the first is predicted
from the tokens before it in its window (context restarts at each window):

    bpb = sum over predicted tokens of -ln p(token | window so far)  /  ln 2  /  bytes(file)

The first token of the file is not predicted (no context); on a held-out file of thousands of
tokens that is a negligible undercount, and the report says how many tokens were scored.

Leaves out: sliding-window (strided) evaluation with overlapping context, which scores lower.
"""

import math

import numpy as np

from minibloom import losses
from minibloom.arguments import check_input_file, check_int
from minibloom.errors import ArgumentError
from minibloom.memory import check_fits
from minibloom.training.data import encode_documents, iter_documents


def corpus_tokens(path, tokenizer) -> tuple[np.ndarray, int]:
    """(token ids (N,) int64, UTF-8 bytes of the text) of a corpus file, read as `train` reads it:
    `minibloom.training.data.iter_documents`, each document followed by `</s>`."""
    counts, chunks = {}, []
    for ids in encode_documents(tokenizer, iter_documents(path, counts)):
        chunks.append(np.asarray(list(ids) + [tokenizer.end_token_id], dtype=np.int64))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return tokens, counts.get("bytes", 0)


def _check_window_memory(lm, sequence_length, batch_size, n_tokens):
    """Before the first forward: the logits (B, T, V), one layer's attention probabilities
    (B, H, T, T) and activations of a batch, float32, with T and B capped by the file's tokens."""
    config = lm.backbone.config
    width = min(sequence_length, n_tokens - 1)
    rows = min(batch_size, -(-(n_tokens - 1) // width))
    nbytes = 4 * rows * width * (config.vocab_size + config.n_head * width + 8 * config.hidden_size)
    check_fits(
        nbytes,
        f"evaluate: sequence_length {sequence_length} x batch_size {batch_size} (windows of {width} "
        f"tokens x {rows} rows: logits and attention)",
        "lower sequence_length (--seq-len) or batch_size (--batch-size)",
    )


def evaluate_file(lm, path, sequence_length=128, batch_size=8, progress=False):
    """Score a corpus file with `lm` (which must have a tokenizer); `progress` shows a tqdm bar
    of the tokens scored (on stderr; the CLI's default).

    Returns {"loss" (nats per predicted token), "perplexity", "bits_per_byte", "tokens" (scored),
    "bytes"}.
    """
    if lm.tokenizer is None:
        raise ArgumentError("evaluate: the model has no tokenizer to encode the text with")
    T = check_int("sequence_length", sequence_length, lo=1)
    batch_size = check_int("batch_size", batch_size, lo=1)
    path = check_input_file("data", path)
    tokens, n_bytes = corpus_tokens(path, lm.tokenizer)  # (N,)
    if len(tokens) < 2 or n_bytes == 0:
        raise ArgumentError(
            f"evaluate: {path} holds too little text to score (need at least two tokens)"
        )

    starts = range(0, len(tokens) - 1, T)  # window i: tokens [s, s + T] (the last may be shorter)
    _check_window_memory(lm, T, batch_size, len(tokens))
    nll = 0.0
    scored = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tokens) - 1, desc="evaluate", unit="tok", unit_scale=True)
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
        if bar is not None:
            bar.update(int(mask.sum()))
            bar.set_postfix(loss=f"{nll / scored:.4f}")
    if bar is not None:
        bar.close()
    loss = nll / scored
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nll / math.log(2) / n_bytes,
        "tokens": scored,
        "bytes": n_bytes,
    }
