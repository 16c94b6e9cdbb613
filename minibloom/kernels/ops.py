"""The fast tier of ops.py: the same signatures and results (to float32 rounding), faster.

minibloom/dispatch.py hands these out in place of the reference ops (minibloom/ops.py) when the
fast tier is on (numba installed and MINIBLOOM_NUMBA not "0"); every other op comes from the
reference. Each function here has a test that it equals its reference twin
(tests/test_ops.py, tests/test_decode_paths.py); the chunked products are compared at float32
rounding (BLAS may block a chunk's sums differently), the chunked GeLU bit for bit.

    linear_forward       many float32 rows (more than MATVEC16_ROWS: a prefill, a scoring
                         pass): kernels/gemm.py's product in column chunks taken in turn by the
                         threads, the bias added per chunk; a float16 weight and at most
                         MATVEC16_ROWS rows (a decode step): the matvec16 kernel reads the 16-bit
                         words and widens them row by row inside the dot products (half the
                         bytes of widening W first); the bias is added in place
    lm_head_forward      the same for the tied head (many rows: E, a float16 E too, read in
                         chunks of rows; no float32 copy of E is made)
    gelu_forward         many float32 rows: the reference expression evaluated in place over
                         chunks of rows, in parallel (gemm.elementwise_split: NumPy's ufuncs
                         release the GIL); few rows: the same passes on the whole array
    gelu_backward        the reference expression evaluated in place, in the same order
                         (no numba: NumPy's tanh is SIMD, a numba loop calls the scalar tanhf;
                         measured 4x slower forward, 1.5x backward on (8, 128, 4096) float32)
    attention_forward/_backward  the numba loops of kernels/attention.py (no dropout; with a
                         dropout mask the reference runs)

float64 inputs (the `compare` truth) always take the reference path or the same NumPy
expressions in float64: the numba loops are float32 only, so they hand float64 to ops.py.

Leaves out: anything that changes results beyond float32 rounding.
"""

import math

import numpy as np

from minibloom import ops
from minibloom.kernels import attention as attention_kernels
from minibloom.kernels import gemm
from minibloom.kernels.matvec16 import matvec16
from minibloom.ops import (
    GELU_C0,
    GELU_C1,
    GELU_C2,
    AttentionCache,
    DropoutCache,
    GeluCache,
    LinearCache,
    widen,
)

# Up to this many rows (B * T: a decode step), a float16 weight is read by the matvec16 kernel.
MATVEC16_ROWS = 16
HEAD_CHUNK_ROWS = 32768  # rows of a float16 E widened at a time by lm_head_forward


def _reads_16_bit(x2, W):
    return W.dtype == np.float16 and x2.dtype == np.float32 and x2.shape[0] <= MATVEC16_ROWS


def times_weight_t(x2, W):
    """x2 @ W.T for x2 (N, in) float32 and W (out, in) in its stored dtype -> (N, out) float32."""
    if _reads_16_bit(x2, W):
        return matvec16(x2, W.view(np.uint16), "F16")
    return x2 @ widen(W, x2).T  # one BLAS call for the whole batch


def _split(x2):
    """Many float32 rows (a prefill, a scoring pass): the product is split into chunks (gemm.py)."""
    return x2.dtype == np.float32 and x2.shape[0] > MATVEC16_ROWS


def linear_forward(x, W, b):
    """ops.linear_forward: y = x @ W.T + b, with the matvec16 path for few rows of float16 W and
    the chunked product of kernels/gemm.py (bias added per chunk) for many rows."""
    x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)
    if _split(x2):
        W = widen(W, x)  # float32, kept for the backward
        y = gemm.times_weight_t_split(x2, W, b)  # (N, out)
        return y.reshape(*x.shape[:-1], W.shape[0]), LinearCache(x, W)  # (N, out) -> (..., out)
    if not _reads_16_bit(x2, W):
        W = widen(W, x)  # float32 for BLAS and for the backward
    y = times_weight_t(x2, W)  # (N, out)
    y += widen(b, x)
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
            h @ E[start : start + HEAD_CHUNK_ROWS].astype(hidden.dtype).T
        )
    return out.reshape(B, T, -1)  # (B*T, V) -> (B, T, V)


def _gelu_rows(x, y):
    """y = gelu(x) for one chunk of rows, the expression of gelu_forward in the same order."""
    u = np.multiply(x, GELU_C1, dtype=x.dtype)
    u *= x
    u += 1.0  # 1 + 0.044715 x^2
    t = np.multiply(x, GELU_C0, dtype=x.dtype)
    u *= t
    np.tanh(u, out=u)
    u += 1.0
    np.multiply(x, 0.5, out=y)
    y *= u


def gelu_forward(x):
    """ops.gelu_forward evaluated in place: x * 0.5 * (1 + tanh(C0 * x * (1 + C1 * x * x))).

    float32 with many rows: the same passes over chunks of rows, in parallel (kernels/gemm.py)."""
    if x.dtype == np.float32 and x.ndim >= 2 and x.size // x.shape[-1] > MATVEC16_ROWS:
        return gemm.elementwise_split(_gelu_rows, x), GeluCache(x)
    u = GELU_C1 * x
    u *= x
    u += 1.0  # 1 + 0.044715 x^2
    u *= GELU_C0 * x
    np.tanh(u, out=u)
    u += 1.0
    y = x * 0.5
    y *= u
    return y, GeluCache(x)


def gelu_backward(dy, cache):
    """ops.gelu_backward evaluated in place (the same terms in the same order)."""
    x = cache.x
    t = GELU_C1 * x
    t *= x
    t += 1.0
    t *= GELU_C0 * x
    np.tanh(t, out=t)
    slope = GELU_C2 * x
    slope *= x
    slope += GELU_C0  # 0.79788456 + 0.1070322243 x^2
    slope *= 1.0 - t * t
    slope *= 0.5 * x
    t += 1.0
    t *= 0.5
    slope += t
    slope *= dy
    return slope


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
    q, k, v, probs, dcache = cache
    if dcache.keep is not None or q.dtype != np.float32:
        return ops.attention_backward(dctx, cache)
    return attention_kernels.attention_backward(dctx, q, k, v, probs, 1.0 / math.sqrt(q.shape[-1]))
