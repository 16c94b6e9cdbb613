"""The fast tier of ops.py: the same signatures and results (to float32 rounding), faster.

minibloom/dispatch.py hands these out in place of the reference ops (minibloom/ops.py) when the
fast tier is on (numba installed and MINIBLOOM_NUMBA not "0"); every other op comes from the
reference. Each function here has a test that it equals its reference twin
(tests/test_ops.py, tests/test_decode_paths.py); the chunked products are compared at float32
rounding (BLAS may block a chunk's sums differently), the chunked GeLU bit for bit.

    linear_forward       at most MATVEC16_ROWS rows (a decode step): a 16-bit weight (float16, or
                         bfloat16 words) is read by the matvec16 kernel, which widens it inside
                         the dot products (half the bytes of widening W first); a float32 weight
                         by matvec32, the same tiles (faster than BLAS's x @ W.T for few rows);
                         the kernel adds the bias to each sum as it stores it. Many float32
                         rows (a prefill, a scoring pass): kernels/gemm.py's product in column
                         chunks taken in turn by the threads, the bias added per chunk; a 16-bit
                         W is widened per chunk in the threads and its cache keeps W as stored
                         (ops.linear_backward widens it): no float32 copy of the matrix is written
    lm_head_forward      the same for the tied head (many rows: E, a 16-bit E too, read in chunks
                         of rows; no float32 copy of E is made)
    layernorm_forward/_backward  kernels/layernorm.py: one threaded pass over chunks of rows;
                         up to one chunk (kernels/layernorm.ROWS rows: a decode step) the same
                         row loop on the calling thread; the forward reads w and b as stored;
                         the backward of one chunk or less: the reference
    gelu_forward/_backward  kernels/gelu.py: the reference expressions in threaded numba passes
                         around NumPy's SIMD tanh (numba's own tanh is a scalar call), the
                         same operations in the same order: bit for bit the reference
    attention_forward/_backward  kernels/attention.py: BLAS products and a fused threaded
                         softmax (no dropout; with a dropout mask the reference runs)

The backward ops also switch glibc malloc to keeping freed memory, once per process
(kernels/malloc.py): a training step frees and reallocates the same arrays every step.

float64 inputs (the `compare` truth) always take the reference path or the same NumPy
expressions in float64: the numba loops are float32 only, so they hand float64 to ops.py.

Leaves out: anything that changes results beyond float32 rounding.
"""

import math

import numpy as np

from minibloom import ops
from minibloom.kernels import attention as attention_kernels
from minibloom.kernels import gelu as gelu_kernels
from minibloom.kernels import gemm
from minibloom.kernels import layernorm as layernorm_kernels
from minibloom.kernels.malloc import keep_freed_memory
from minibloom.kernels.matvec16 import matvec16, matvec32
from minibloom.ops import (
    BF16_WORDS,
    AttentionCache,
    DropoutCache,
    GeluCache,
    LayerNormCache,
    LinearCache,
    widen,
)

# Up to this many rows (B * T: a decode step), a weight is read by the matvec kernels
# (kernels/matvec16.py): 16-bit weights widened inside the dot products, float32 ones read as they
# are (OpenBLAS's x @ W.T reads W at a fraction of the bandwidth for so few rows).
MATVEC16_ROWS = 16
HEAD_CHUNK_ROWS = 32768  # rows of a 16-bit E widened at a time by lm_head_forward
_KINDS = {np.dtype(np.float16): "F16", BF16_WORDS: "BF16"}  # in-memory dtype -> matvec16 kind
_WORD_DTYPES = (np.dtype(np.float32), *_KINDS)  # parameter dtypes the decode loops read as stored


def _few_rows(x2):
    return x2.dtype == np.float32 and x2.shape[0] <= MATVEC16_ROWS


def _reads_16_bit(x2, W):
    return W.dtype in _KINDS and _few_rows(x2)


def times_weight_t(x2, W, b=None):
    """x2 @ W.T (+ b) for x2 (N, in) float32 and W (out, in), b (out,) in their stored dtypes ->
    (N, out) float32. The matvec kernels add b to each sum before storing it."""
    if _reads_16_bit(x2, W):
        return matvec16(x2, W.view(np.uint16), _KINDS[W.dtype], b)
    if W.dtype == np.float32 and _few_rows(x2):
        return matvec32(x2, W, b)
    y = x2 @ widen(W, x2).T  # one BLAS call for the whole batch
    if b is not None:
        y += widen(b, x2)
    return y


def _split(x2):
    """Many float32 rows (a prefill, a scoring pass): the product is split into chunks (gemm.py)."""
    return x2.dtype == np.float32 and x2.shape[0] > MATVEC16_ROWS


def linear_forward(x, W, b):
    """ops.linear_forward: y = x @ W.T + b, with the matvec16 path for few rows of float16 W and
    the chunked product of kernels/gemm.py (bias added per chunk) for many rows."""
    x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)
    if _split(x2):
        # a 16-bit W is widened chunk by chunk in the threads (cache-sized pieces, never whole)
        # and kept as stored in the cache: ops.linear_backward widens it if a backward comes
        y = gemm.times_weight_t_split(x2, W, b)  # (N, out)
        return y.reshape(*x.shape[:-1], W.shape[0]), LinearCache(x, W)  # (N, out) -> (..., out)
    if not _reads_16_bit(x2, W):
        W = widen(W, x)  # float32 for BLAS and for the backward
    y = times_weight_t(x2, W, b)  # (N, out), the bias added in the kernel
    return y.reshape(*x.shape[:-1], W.shape[0]), LinearCache(x, W)  # (N, out) -> (..., out)


def lm_head_forward(hidden, E):
    """ops.lm_head_forward: logits = hidden @ E.T, reading a float16 E without widening it whole."""
    B, T, C = hidden.shape
    h = hidden.reshape(B * T, C)  # one (B*T, C) @ (C, V) call: E is read once, not B times
    if _split(h):  # E (a float16 one too) read in chunks of rows that stay in cache
        return gemm.times_weight_t_split(h, E).reshape(B, T, -1)  # (B*T, V) -> (B, T, V)
    if E.dtype == hidden.dtype or B * T <= MATVEC16_ROWS:
        return times_weight_t(h, E).reshape(B, T, -1)  # (B*T, V) -> (B, T, V)
    out = np.empty((B * T, E.shape[0]), dtype=hidden.dtype)
    for start in range(0, E.shape[0], HEAD_CHUNK_ROWS):
        out[:, start : start + HEAD_CHUNK_ROWS] = (
            h @ widen(E[start : start + HEAD_CHUNK_ROWS], hidden).T
        )
    return out.reshape(B, T, -1)  # (B*T, V) -> (B, T, V)


def layernorm_forward(x, w, b, eps):
    """ops.layernorm_forward in numba (kernels/layernorm.py): one threaded pass over chunks of
    rows, or for a decode step's few rows the same row loop on the calling thread; w and b are
    read as stored (float32, float16, bfloat16 words). float64 takes the reference."""
    if x.dtype != np.float32 or w.dtype not in _WORD_DTYPES or b.dtype not in _WORD_DTYPES:
        return ops.layernorm_forward(x, w, b, eps)
    y, norm, rstd = layernorm_kernels.layernorm(x, w, b, eps)
    return y, LayerNormCache(norm, rstd, widen(w, x))


def layernorm_backward(dy, cache):
    """ops.layernorm_backward in one threaded numba pass (kernels/layernorm.py)."""
    norm, rstd, w = cache
    if norm.dtype != np.float32 or norm.size <= layernorm_kernels.ROWS * norm.shape[-1]:
        return ops.layernorm_backward(dy, cache)
    return layernorm_kernels.layernorm_backward(dy, norm, rstd, w)


def gelu_forward(x):
    """ops.gelu_forward, bit for bit: threaded numba passes around NumPy's tanh (kernels/gelu.py)."""
    if x.dtype != np.float32:
        return ops.gelu_forward(x)
    return gelu_kernels.gelu(x), GeluCache(x)


def gelu_backward(dy, cache):
    """ops.gelu_backward, bit for bit: the same passes (kernels/gelu.py)."""
    keep_freed_memory()  # training: reuse the step's arrays from the heap (kernels/malloc.py)
    if cache.x.dtype != np.float32:
        return ops.gelu_backward(dy, cache)
    return gelu_kernels.gelu_backward(dy, cache.x)


def attention_forward(q, k, v, alibi, visible, dropout_p=0.0, rng=None):
    """ops.attention_forward with the softmax and both products in one numba loop per (b, h)."""
    if dropout_p > 0.0 or q.dtype != np.float32:
        return ops.attention_forward(q, k, v, alibi, visible, dropout_p, rng)
    inv = 1.0 / math.sqrt(q.shape[-1])
    probs, ctx = attention_kernels.attention(
        q, k, v, alibi, visible, inv
    )  # (B, H, T, S), (B, H, T, D)
    return ctx, AttentionCache(q, k, v, probs, DropoutCache(None, 1.0))


def attention_backward(dctx, cache):
    """ops.attention_backward with the numba loop (no dropout; with a keep-mask the reference runs)."""
    keep_freed_memory()  # training: reuse the step's arrays from the heap (kernels/malloc.py)
    q, k, v, probs, dcache = cache
    if dcache.keep is not None or q.dtype != np.float32:
        return ops.attention_backward(dctx, cache)
    return attention_kernels.attention_backward(dctx, q, k, v, probs, 1.0 / math.sqrt(q.shape[-1]))
