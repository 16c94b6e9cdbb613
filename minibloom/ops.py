"""The operations BLOOM is built from, each forward next to its backward.

Every op is a pair:

    X_forward(inputs...)  -> (out, cache)       cache: a NamedTuple of what the backward needs
    X_backward(dout, cache) -> d_inputs...      gradients in the forward's input order

so the math of a layer and of its derivative read side by side (the llm.c layout). Backward
comments quote the forward expression they differentiate. The ops, in the order a block uses them:

    embedding       x = E[ids]                                cache EmbeddingCache(ids, V)
    layernorm       y = (x - mean) * rstd * w + b             cache LayerNormCache(norm, rstd, w)
    linear          y = x @ W.T + b   (torch layout W (out, in))   cache LinearCache(x, W)
    gelu            y = tanh-GeLU(x)  (HF's literal 0.79788456)    cache GeluCache(x)
    dropout         y = x * keep / (1 - p)                    cache DropoutCache(keep, scale)
    attention       ctx = softmax(alibi + (q @ k^T) / sqrt(D), masked) @ v
                                                              cache AttentionCache(q, k, v, probs, dropout)
    (loss: losses.py, softmax cross-entropy with sample weights)

plus the parameter-free helpers that attention needs: ALiBi slopes and positions, the boolean
"may attend" mask (causal + padding), and the head-interleaved fused-QKV split and merge.
ALiBi and the mask have no parameters and their backward is the identity on the scores, so they
have no `_backward`.

Shape legend: B batch, T tokens in this call, S key length (cached + T), C hidden size, H heads,
D = C / H head size, F MLP width, V vocabulary rows.

Dtypes: activations float32. Weights may arrive narrower (a model kept in half precision:
float16, or bfloat16 held as uint16 bit patterns, see `widen`); each op widens them to float32 on
use, so compute is float32 throughout. The same
ops run in float64 when every input is float64 (used only by the gradient-check tests).

This file is the reference tier: plain NumPy, one formula per line, nothing but numpy imported.
The fast tier (minibloom/kernels/ops.py: numba attention loops, 16-bit matrix-vector products,
in-place GeLU passes) replaces some of these functions with versions of the same signature and
the same results to float32 rounding; minibloom/dispatch.py is the one place that chooses, and
`MINIBLOOM_NUMBA=0` (or numba not installed) selects this file everywhere.

Leaves out: the block and model wiring (model.py), the KV cache bookkeeping (kvcache.py), the
loss (losses.py), and HF's `pretraining_tp`/`slow_but_exact` replay (not used by released models).
"""

import math
from typing import NamedTuple

import numpy as np

BF16_WORDS = np.dtype(np.uint16)  # how a bfloat16 weight is held in memory (NumPy has no bfloat16)


def widen(w, like):
    """A weight in the compute dtype of `like` (float32, or float64 in gradient checks); no copy if it already is.

    A uint16 weight holds bfloat16 bit patterns (a model loaded with dtype="auto" from a BF16
    checkpoint): a bfloat16 is the top half of a float32, so its float32 value has those 16 bits
    on top and zeros below (exact).
    """
    if w.dtype == BF16_WORDS:
        w = (w.astype(np.uint32) << 16).view(np.float32)  # (...) bf16 words -> float32 values
    return np.asarray(w, dtype=np.result_type(like.dtype, np.float32))


# ------------------------------------------------------------------------------------------------
# embedding lookup
# ------------------------------------------------------------------------------------------------


class EmbeddingCache(NamedTuple):
    ids: np.ndarray  # (B, T) int64
    vocab_size: int


def embedding_forward(ids, E):
    """x[b, t] = E[ids[b, t]]. ids (B, T) int, E (V, C) -> x (B, T, C), the rows widened to float32."""
    x = widen(E[ids], E)  # (B, T, C) float32 (float64 in gradient checks)
    return x, EmbeddingCache(ids, E.shape[0])


def embedding_backward(dx, cache, dE=None):
    """dE for `x = E[ids]`: scatter-add each position's gradient into its row.

    np.add.at, not `dE[ids] += dx`: when an id repeats, fancy-index += keeps only one of the
    updates, while add.at accumulates all of them.

    dE: None for a fresh zero (V, C) array, or a (V, C) gradient to add into in place (the tied
    head's): that skips allocating and then adding a second (V, C) array, 1 GB each for
    bloom-560m, when only B*T rows change.
    """
    B, T, C = dx.shape
    if dE is None:
        dE = np.zeros((cache.vocab_size, C), dtype=dx.dtype)
    np.add.at(dE, cache.ids.reshape(-1), dx.reshape(B * T, C))
    return dE


# ------------------------------------------------------------------------------------------------
# layer normalization
# ------------------------------------------------------------------------------------------------


class LayerNormCache(NamedTuple):
    norm: np.ndarray  # (..., C) (x - mean) * rstd
    rstd: np.ndarray  # (..., 1) 1 / sqrt(var + eps)
    w: np.ndarray  # (C,) gamma, widened


def layernorm_forward(x, w, b, eps):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis (biased variance, as torch).

    x (..., C), w/b (C,) -> y (..., C). Cache: LayerNormCache(norm, rstd, w).
    """
    w, b = widen(w, x), widen(b, x)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True)  # (..., 1) biased
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    norm = xc * rstd
    y = norm * w + b
    return y, LayerNormCache(norm, rstd, w)


def layernorm_backward(dy, cache):
    """Gradients of `y = norm * w + b`, `norm = (x - mean) * rstd`, returned as (dx, dw, db).

    Closed form (llm.c): with g = dy * w,
        dx = (g - mean(g) - norm * mean(g * norm)) * rstd
    The two means are the gradient flowing back through `mean` and through `rstd`.
    """
    norm, rstd, w = cache
    C = norm.shape[-1]
    dw = (dy * norm).reshape(-1, C).sum(axis=0)  # y = norm * w + b
    db = dy.reshape(-1, C).sum(axis=0)
    g = dy * w
    dx = (
        g - g.mean(axis=-1, keepdims=True) - norm * (g * norm).mean(axis=-1, keepdims=True)
    ) * rstd
    return dx, dw, db


# ------------------------------------------------------------------------------------------------
# linear (torch layout)
# ------------------------------------------------------------------------------------------------


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., in)
    W: np.ndarray  # (out, in), widened


def linear_forward(x, W, b):
    """y = x @ W.T + b. x (..., in), W (out, in) as stored by torch, b (out,) -> y (..., out)."""
    W = widen(W, x)  # float32 (no copy if it already is)
    x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in): one matrix product for every row
    y = x2 @ W.T + widen(b, x)  # (N, out)
    return y.reshape(*x.shape[:-1], W.shape[0]), LinearCache(x, W)  # (N, out) -> (..., out)


def linear_backward(dy, cache):
    """Gradients of `y = x @ W.T + b`, returned as (dx, dW, db): dx = dy @ W, dW = dy^T @ x, db = sum dy.

    The cache's W may be 16-bit (the fast tier's many-row forward keeps it as stored)."""
    x, W = cache
    W = widen(W, dy)  # float32 (no copy when it already is)
    n_out, n_in = W.shape
    dy2 = dy.reshape(-1, n_out)  # (..., out) -> (N, out)
    dx = (dy2 @ W).reshape(x.shape)  # (N, in) -> (..., in)
    dW = dy2.T @ x.reshape(-1, n_in)  # (out, N) @ (N, in) -> (out, in)
    db = dy2.sum(axis=0)
    return dx, dW, db


# ------------------------------------------------------------------------------------------------
# the tied LM head
# ------------------------------------------------------------------------------------------------


def lm_head_forward(hidden, E):
    """logits = hidden @ E.T: the tied head reuses the embedding E (V, C). hidden (B, T, C) -> (B, T, V)."""
    B, T, C = hidden.shape
    logits = hidden.reshape(B * T, C) @ widen(E, hidden).T  # (B*T, V): E is read once, not B times
    return logits.reshape(B, T, -1)  # (B*T, V) -> (B, T, V)


def lm_head_backward(dlogits, hidden, E):
    """Gradients of `logits = hidden @ E.T`, returned as (dhidden, dE): dlogits @ E, dlogits^T @ hidden."""
    B, T, V = dlogits.shape
    d2 = dlogits.reshape(B * T, V)  # (B, T, V) -> (B*T, V)
    dhidden = (d2 @ widen(E, dlogits)).reshape(B, T, -1)  # (B*T, C) -> (B, T, C)
    dE = d2.T @ hidden.reshape(B * T, -1)  # (V, B*T) @ (B*T, C) -> (V, C)
    return dhidden, dE


# ------------------------------------------------------------------------------------------------
# tanh-approximation GeLU
# ------------------------------------------------------------------------------------------------

GELU_C0 = 0.79788456  # sqrt(2 / pi), truncated as in HF BLOOM
GELU_C1 = 0.044715
GELU_C2 = 0.1070322243  # 3 * GELU_C1 * sqrt(2 / pi), HF's bloom_gelu_back


class GeluCache(NamedTuple):
    x: np.ndarray


def gelu_forward(x):
    """HF BLOOM's tanh GeLU, elementwise, with its truncated constant 0.79788456 for sqrt(2 / pi)."""
    y = x * 0.5 * (1.0 + np.tanh(GELU_C0 * x * (1 + GELU_C1 * x * x)))
    return y, GeluCache(x)


def gelu_backward(dy, cache):
    """dx for the GeLU above, HF's `bloom_gelu_back`: with t = tanh(0.79788456 x (1 + 0.044715 x^2)),
    dy/dx = 0.5 x (1 - t^2) (0.79788456 + 0.1070322243 x^2) + 0.5 (1 + t)."""
    x = cache.x
    t = np.tanh(GELU_C0 * x * (1 + GELU_C1 * x * x))
    slope = 0.5 * x * ((1 - t * t) * (GELU_C0 + GELU_C2 * x * x)) + 0.5 * (1 + t)
    return slope * dy


# ------------------------------------------------------------------------------------------------
# dropout (inverted: scale the kept values by 1 / (1 - p) during training)
# ------------------------------------------------------------------------------------------------


class DropoutCache(NamedTuple):
    keep: np.ndarray | None  # bool, same shape as x; None when nothing is dropped
    scale: float  # 1 / (1 - p)


def dropout_forward(x, p, rng):
    """y = x * keep / (1 - p) with keep ~ Bernoulli(1 - p), drawn from `rng` (np.random.Generator).

    p == 0 is the identity (no mask drawn, no rng needed).
    """
    if p == 0.0:
        return x, DropoutCache(None, 1.0)
    keep = rng.random(x.shape, dtype=np.float32) >= p
    scale = 1.0 / (1.0 - p)
    return x * keep * x.dtype.type(scale), DropoutCache(keep, scale)


def dropout_backward(dy, cache):
    """dx for `y = x * keep * scale`: the same keep-mask and scale."""
    if cache.keep is None:
        return dy
    return dy * cache.keep * dy.dtype.type(cache.scale)


# ------------------------------------------------------------------------------------------------
# ALiBi and masks (no parameters, no backward: they are added to the scores)
# ------------------------------------------------------------------------------------------------


def alibi_slopes(num_heads):
    """The ALiBi slope of each head, (H,) float32, as in the BLOOM / ALiBi papers.

    For a power of two n: slope_k = 2^(-8k/n), k = 1..n. Otherwise take the closest power of two
    c < n for the first c heads, and fill the remaining n - c heads with the odd powers
    1, 3, 5, ... of 2^(-8/(2c)) (the slopes that a 2c-head model has between ours).
    """
    c = 2 ** int(math.floor(math.log2(num_heads)))
    base = 2.0 ** (-8.0 / c)
    slopes = [base**k for k in range(1, c + 1)]
    if c != num_heads:
        extra_base = 2.0 ** (-8.0 / (2 * c))
        slopes += [extra_base**k for k in range(1, 2 * (num_heads - c), 2)]
    return np.asarray(slopes, dtype=np.float32)


def alibi_bias(padding_mask, slopes):
    """ALiBi bias (B, H, S) float32: slope[h] * pos[b, j], where pos counts real tokens only.

    pos = (cumsum(mask) - 1) * mask numbers the real tokens 0, 1, 2, ... and skips pads (pads get
    0), exactly as HF does. The bias depends on the key position only; softmax is unchanged by a
    per-row constant, so this equals the paper's -slope * (query_pos - key_pos) on visible keys.
    padding_mask (B, S) bool, slopes (H,) float32.
    """
    m = padding_mask.astype(np.int64)
    pos = ((np.cumsum(m, axis=-1) - 1) * m).astype(np.float32)  # (B, S)
    return slopes[None, :, None] * pos[:, None, :]  # (B, H, S)


def attention_visibility(padding_mask, T):
    """Which keys each new query may attend to: (B, T, S) bool.

    Query t of this call sits at absolute index P + t (P = S - T tokens already cached); it sees
    key j when j <= P + t (causal) and key j is not padding.
    """
    B, S = padding_mask.shape
    P = S - T
    causal = np.arange(S)[None, :] <= (P + np.arange(T))[:, None]  # (T, S)
    return causal[None, :, :] & padding_mask[:, None, :].astype(bool)  # (B, T, S)


def split_heads(fused, num_heads):
    """Fused QKV (B, T, 3C) -> q, k, v each (B, H, T, D).

    BLOOM's fused rows are head-interleaved: the 3C axis is (H, 3, D), i.e. head 0's q, k, v, then
    head 1's, ... (not [all q; all k; all v] as in GPT-NeoX style checkpoints).
    """
    B, T, C3 = fused.shape
    D = C3 // (3 * num_heads)
    f = fused.reshape(B, T, num_heads, 3, D)  # (B, T, H, 3, D)
    f = f.transpose(3, 0, 2, 1, 4)  # (3, B, H, T, D)
    # Contiguous copies: NumPy's matmul only hands stacked matrices to BLAS when each one has unit
    # stride along a row; on these interleaved views it falls back to a loop ~100x slower.
    return np.ascontiguousarray(f[0]), np.ascontiguousarray(f[1]), np.ascontiguousarray(f[2])


def merge_qkv_grads(dq, dk, dv):
    """Inverse of split_heads for the gradients: dq, dk, dv (B, H, T, D) -> dfused (B, T, 3C)."""
    B, H, T, D = dq.shape
    d = np.empty((B, T, H, 3, D), dtype=dq.dtype)  # written once, in the fused layout
    for i, di in enumerate((dq, dk, dv)):
        d[:, :, :, i] = di.transpose(0, 2, 1, 3)  # (B, H, T, D) -> (B, T, H, D)
    return d.reshape(B, T, H * 3 * D)  # (B, T, H, 3, D) -> (B, T, 3C)


def merge_heads(ctx):
    """(B, H, T, D) -> (B, T, C) with feature index head * D + d, the layout `dense` expects."""
    B, H, T, D = ctx.shape
    return ctx.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H, D) -> (B, T, C)


def split_merged_grad(dout, num_heads):
    """Inverse of merge_heads for the gradient: (B, T, C) -> (B, H, T, D)."""
    B, T, C = dout.shape
    return dout.reshape(B, T, num_heads, C // num_heads).transpose(0, 2, 1, 3)  # (B, H, T, D)


# ------------------------------------------------------------------------------------------------
# scaled dot-product attention with ALiBi
# ------------------------------------------------------------------------------------------------


class AttentionCache(NamedTuple):
    q: np.ndarray  # (B, H, T, D)
    k: np.ndarray  # (B, H, S, D)
    v: np.ndarray  # (B, H, S, D)
    probs: np.ndarray  # (B, H, T, S) softmax output, before dropout
    dropout: DropoutCache  # attention-probability dropout


def attention_forward(q, k, v, alibi, visible, dropout_p=0.0, rng=None):
    """ctx = dropout(softmax(alibi + (q @ k^T) * (1/sqrt(D)), masked)) @ v.

    q (B, H, T, D), k/v (B, H, S, D), alibi (B, H, S), visible (B, T, S) bool -> ctx (B, H, T, D).
    The order `alibi + (q @ k^T) * inv` is HF's (torch.baddbmm with beta=1, alpha=inv); the scale
    applies to the product only. Hidden keys get float32's most negative finite value, as HF's
    additive mask does: a row with every key hidden (a left-pad query) then gets a uniform
    distribution, finite garbage that never reaches a real token. Softmax runs in float32.
    Cache: AttentionCache(q, k, v, probs, dropout).
    """
    inv = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.swapaxes(-1, -2)) * q.dtype.type(inv) + alibi[:, :, None, :]  # (B, H, T, S)
    scores = np.where(
        visible[:, None, :, :], scores, np.finfo(q.dtype).min
    )  # (B, 1, T, S) over heads
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)  # (B, H, T, S)
    dropped, dcache = dropout_forward(probs, dropout_p, rng)
    ctx = dropped @ v  # (B, H, T, D)
    return ctx, AttentionCache(q, k, v, probs, dcache)


def attention_backward(dctx, cache):
    """Gradients (dq, dk, dv) of the attention above.

    ctx = dropped @ v               -> ddropped = dctx @ v^T,  dv = dropped^T @ dctx
    dropped = dropout(probs)        -> dprobs = dropout_backward(ddropped)
    probs = softmax(scores)         -> dscores = probs * (dprobs - sum_j(dprobs * probs))
    scores = alibi + qk * inv + mask-> alibi and mask have no parameters: identity on dscores;
                                       hidden keys have probs == 0, so their dscores are 0
    qk = q @ k^T                    -> dq = inv * dscores @ k,  dk = inv * dscores^T @ q
    """
    q, k, v, probs, dcache = cache
    inv = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    dropped = probs if dcache.keep is None else probs * dcache.keep * probs.dtype.type(dcache.scale)
    dv = dropped.swapaxes(-1, -2) @ dctx  # (B, H, S, D)
    dprobs = dropout_backward(dctx @ v.swapaxes(-1, -2), dcache)  # (B, H, T, S)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)) * inv
    dq = dscores @ k  # (B, H, T, D)
    dk = dscores.swapaxes(-1, -2) @ q  # (B, H, S, D)
    return dq, dk, dv
