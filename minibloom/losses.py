"""Softmax cross-entropy over the vocabulary, with per-position sample weights, and its backward.

    ce[b, t]  = logsumexp(logits[b, t]) - logits[b, t, y[b, t]]
    loss      = sum(w * ce) / N

`y` is already shifted (y[b, t] is the token that should follow position t, as keras-hub's
preprocessor returns it); targets equal to -100 (HF's ignore_index) get weight 0. Two choices
of the normaliser N:

    reduction="mean"                 N = sum(w)   HF's convention: a mean over the counted
                                                  targets; zero-weight positions do not dilute it.
    reduction="sum_over_batch_size"  N = B * T    keras 3's default: padded positions still count
                                                  in the divisor, so the loss (and its gradient)
                                                  is HF's times sum(w) / (B * T).
    reduction="sum"                  N = 1

With the same weights the two conventions differ only by that constant factor per batch, but the
factor changes with the amount of padding, so runs are not comparable across conventions.

Leaves out: label smoothing, z-loss, and computing the loss without materialising (B, T, V)
(the backward needs the probabilities anyway).
"""

from typing import NamedTuple

import numpy as np

from minibloom.errors import ArgumentError

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum_over_batch_size", "sum")


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (B, T, V) softmax of the logits
    y: np.ndarray  # (B, T) int64, ignored targets replaced by 0
    w: np.ndarray  # (B, T) weights, 0 where ignored
    norm: float  # N


def softmax_cross_entropy_forward(
    logits, y, sample_weight=None, reduction="mean", overwrite_logits=False
):
    """Weighted cross-entropy. logits (B, T, V) float, y (B, T) int (-100 = ignore),
    sample_weight (B, T) float or None (all ones) -> (loss float, CrossEntropyCache).

    Softmax runs in the logits' dtype (float32) after subtracting the row max.
    overwrite_logits=True computes the probabilities in the logits' own buffer (the same
    operations in the same order, so the same numbers) instead of two new (B, T, V) arrays;
    the training step uses it because it has no further use for its logits.
    """
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction: expected one of {REDUCTIONS}, found {reduction!r}")
    if logits.ndim != 3:
        raise ArgumentError(f"logits: expected (B, T, V), found shape {logits.shape}")
    B, T, V = logits.shape
    y = np.asarray(y)
    if y.shape != (B, T) or not np.issubdtype(y.dtype, np.integer):
        raise ArgumentError(
            f"y: expected (B, T) = {(B, T)} integer targets, found shape {y.shape} dtype {y.dtype}"
        )
    ignored = y == IGNORE_INDEX
    if ((y < 0) & ~ignored).any() or (y >= V).any():
        raise ArgumentError(
            f"y: targets must be in [0, {V}) or {IGNORE_INDEX}, found {y[((y < 0) & ~ignored) | (y >= V)][0]}"
        )
    if sample_weight is None:
        w = np.ones((B, T), dtype=logits.dtype)
    else:
        w = np.asarray(sample_weight, dtype=logits.dtype)
        if w.shape != (B, T):
            raise ArgumentError(f"sample_weight: expected shape {(B, T)}, found {w.shape}")
    w = np.where(ignored, 0, w).astype(logits.dtype)
    y = np.where(ignored, 0, y).astype(np.int64)

    if overwrite_logits:
        shifted = logits
        shifted -= logits.max(axis=-1, keepdims=True)  # (B, T, V)
    else:
        shifted = logits - logits.max(axis=-1, keepdims=True)  # (B, T, V)
    target = np.take_along_axis(shifted, y[..., None], axis=-1)[..., 0]  # (B, T), a copy
    probs = np.exp(shifted, out=shifted if overwrite_logits else None)
    sumexp = probs.sum(axis=-1)  # (B, T)
    probs /= sumexp[..., None]
    ce = np.log(sumexp) - target  # (B, T)
    if reduction == "mean":
        norm = float(w.sum(dtype=np.float64))
        if norm == 0.0:
            raise ArgumentError(
                "sample_weight: every target has weight 0 (or is -100); the mean is undefined"
            )
    elif reduction == "sum_over_batch_size":
        norm = float(B * T)
    else:
        norm = 1.0
    loss = float((w * ce).sum(dtype=np.float64) / norm)
    return loss, CrossEntropyCache(probs, y, w, norm)


def softmax_cross_entropy_backward(dloss, cache):
    """dlogits (B, T, V) for `loss = sum(w * (logsumexp(z) - z[y])) / N`:
    dz = dloss * w * (softmax(z) - onehot(y)) / N.  Overwrites and returns cache.probs."""
    probs, y, w, norm = cache
    d = probs  # softmax(z), reused in place: (B, T, V) is the largest array of a training step
    rows = np.take_along_axis(d, y[..., None], axis=-1)
    np.put_along_axis(d, y[..., None], rows - 1.0, axis=-1)
    d *= (w * d.dtype.type(dloss / norm))[..., None]
    return d
