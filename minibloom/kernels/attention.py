"""ALiBi attention for one layer, forward and backward: numba loops (fast tier).

For q (B, H, T, D), k/v (B, H, S, D), alibi (B, H, S), visible (B, T, S) bool:

    s[b, h, t, j] = alibi[b, h, j] + (q[b, h, t] . k[b, h, j]) * inv   if key j is visible, else float32 min
    p = softmax(s) over j                    (subtract the row max; float32)
    ctx[b, h, t] = sum_j p[b, h, t, j] * v[b, h, j]

which is HF's `alibi.baddbmm(q, k^T, beta=1, alpha=inv)` + additive mask + float32 softmax + bmm.

The reference twin is ops.attention_forward / attention_backward (three stacked matmuls and a
written-out softmax; kernels/ops.py calls these loops in its place). The numba loop works on one
(b, h) pair at a time, pairs split across threads (or, for small calls such as a decode step,
all on the calling thread: `SERIAL_WORK`). It skips the keys that come after the query
(half of a causal prompt), and its innermost loops run along contiguous memory without a
reduction (k is transposed once per pair), which the compiler vectorises without reordering
sums. It also avoids stacked matmuls of small matrices, where a threaded BLAS on a busy machine
spends more time waking its threads than multiplying (measured: 0.4 s instead of 1 ms for one
layer's q @ k^T at B=1, H=16, T=128 with two OpenBLAS threads and a loaded CPU). The two agree
to float32 rounding (~1e-7; sums run in a different order).

`attention_backward` does the same for the gradients (four stacked matmuls in the twin).

Leaves out: dropout (ops.py applies it to the returned probabilities, and takes the plain
backward when a keep-mask is present).
"""

import numpy as np

from minibloom.jit import njit, prange

# Multiply-adds (B * H * T * S * D) up to which the forward runs on one thread (a decode step).
SERIAL_WORK = 1 << 22


@njit
def _attention_pair(q, k, v, alibi, visible, inv, fmin, probs, ctx, b, h):
    """The attention of one (batch row b, head h) pair: fills probs[b, h] (T, S) and ctx[b, h] (T, D)."""
    T, D = q.shape[2], q.shape[3]
    S = k.shape[2]
    kT = np.ascontiguousarray(k[b, h].T)  # (D, S): rows along keys
    for t in range(T):
        n = S - T + t + 1  # causal: keys after this query's position are never visible
        s = probs[b, h, t]  # (S,) this query's scores, then probabilities
        s[:] = 0
        for d in range(D):  # s[j] += q[t, d] * k[j, d], vectorised along j
            qd = q[b, h, t, d]
            for j in range(n):
                s[j] += qd * kT[d, j]
        m = fmin
        for j in range(S):
            if j < n and visible[b, t, j]:
                s[j] = alibi[b, h, j] + s[j] * inv
            else:
                s[j] = fmin
            if s[j] > m:
                m = s[j]
        total = s[0] - s[0]  # zero in the array's dtype
        for j in range(S):
            s[j] = np.exp(s[j] - m)
            total += s[j]
        c = ctx[b, h, t]  # (D,)
        c[:] = 0
        for j in range(S):
            s[j] = s[j] / total
            if s[j] != 0:  # hidden keys have probability exactly 0
                pj = s[j]
                for d in range(D):
                    c[d] += pj * v[b, h, j, d]


@njit(parallel=True)
def _attention_numba(q, k, v, alibi, visible, inv, fmin, probs, ctx):
    B, H = q.shape[0], q.shape[1]
    for bh in prange(B * H):  # (b, h) pairs split across threads
        _attention_pair(q, k, v, alibi, visible, inv, fmin, probs, ctx, bh // H, bh % H)


@njit
def _attention_serial(q, k, v, alibi, visible, inv, fmin, probs, ctx):
    B, H = q.shape[0], q.shape[1]
    for bh in range(B * H):  # the same loop on the calling thread only
        _attention_pair(q, k, v, alibi, visible, inv, fmin, probs, ctx, bh // H, bh % H)


def attention(q, k, v, alibi, visible, inv):
    """(probs (B, H, T, S), ctx (B, H, T, D)) for the attention above, in q's float dtype."""
    B, H, T, D = q.shape
    S = k.shape[2]
    f = q.dtype.type
    probs = np.empty((B, H, T, S), dtype=q.dtype)
    ctx = np.empty((B, H, T, D), dtype=q.dtype)
    # A decode step (one query per row) is a few hundred thousand multiply-adds: less than what
    # waking the worker threads costs on a busy machine (measured ~3 ms per layer), so small
    # calls run on the calling thread.
    kernel = _attention_serial if B * H * T * S * D <= SERIAL_WORK else _attention_numba
    kernel(
        q,
        k,
        v,
        np.asarray(alibi, dtype=q.dtype),
        np.ascontiguousarray(visible),
        f(inv),
        f(np.finfo(q.dtype).min),
        probs,
        ctx,
    )
    return probs, ctx


# --- backward -----------------------------------------------------------------------------------


@njit(parallel=True)
def _attention_backward_numba(dctx, q, k, v, probs, inv, dq, dk, dv):
    B, H, T, D = q.shape
    S = k.shape[2]
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        vT = np.ascontiguousarray(v[b, h].T)  # (D, S)
        dp = np.empty(S, dtype=q.dtype)
        dk[b, h] = 0
        dv[b, h] = 0
        for t in range(T):
            n = S - T + t + 1  # keys this query could see; probs are 0 beyond ...
            p = probs[b, h, t]
            if n < S and p[n] != 0:  # ... except in a row with no visible key (a left pad),
                n = S  # which is uniform over all S keys (HF's finfo.min fill), future ones too
            dp[:n] = 0
            for d in range(D):  # dprobs[j] = dctx[t] . v[j], vectorised along j
                g = dctx[b, h, t, d]
                for j in range(n):
                    dp[j] += g * vT[d, j]
            row = dp[0] - dp[0]  # sum_j dprobs * probs
            for j in range(n):
                row += dp[j] * p[j]
            dq[b, h, t] = 0
            for j in range(n):
                if p[j] != 0:
                    ds = p[j] * (dp[j] - row) * inv  # dscores[t, j]
                    for d in range(D):
                        dq[b, h, t, d] += ds * k[b, h, j, d]
                        dk[b, h, j, d] += ds * q[b, h, t, d]
                        dv[b, h, j, d] += p[j] * dctx[b, h, t, d]


def attention_backward(dctx, q, k, v, probs, inv):
    """(dq, dk, dv) of ctx = softmax(alibi + q @ k^T * inv, masked) @ v, given probs (no dropout)."""
    dctx = np.ascontiguousarray(dctx)
    f = q.dtype.type
    dq, dk, dv = np.empty_like(q), np.empty(k.shape, q.dtype), np.empty(v.shape, q.dtype)
    _attention_backward_numba(dctx, q, k, v, probs, f(inv), dq, dk, dv)
    return dq, dk, dv
