"""ALiBi attention for one layer, forward and backward: numba loops (fast tier).

For q (B, H, T, D), k/v (B, H, S, D), alibi (B, H, S), visible (B, T, S) bool:

    s[b, h, t, j] = alibi[b, h, j] + (q[b, h, t] . k[b, h, j]) * inv   if key j is visible, else float32 min
    p = softmax(s) over j                    (subtract the row max; float32)
    ctx[b, h, t] = sum_j p[b, h, t, j] * v[b, h, j]

which is HF's `alibi.baddbmm(q, k^T, beta=1, alpha=inv)` + additive mask + float32 softmax + bmm.

The reference twin is ops.attention_forward / attention_backward (three stacked matmuls and a
written-out softmax over whole (B, H, T, S) arrays; kernels/ops.py calls these in its place).

Large calls (a prompt, a training batch) keep the products in BLAS (stacked matmuls) and fuse
the softmax into two threaded numba passes over the (b, h) pairs, with NumPy's SIMD exp between
them: pass 1 scales, adds ALiBi, hides masked keys and subtracts the row max (keys after the
query are never read), NumPy exponentiates in place (the reference's own exp, ~8x faster than
numba's scalar exp call per key), pass 2 divides by the row sum. The backward likewise: four
stacked matmuls and one fused numba pass for dscores = probs * (dprobs - rowsum) * inv, which
skips the keys after the query. Measured on (8, 4, 256, 64), 2 threads: forward 2.2x, backward
2x the NumPy twin's speed (and 3.6x / 2.4x the per-key numba loops these replaced).

A decode step (one query per row, T = 1, up to `SERIAL_WORK` multiply-adds) runs one numba loop
per (b, h) pair: one dot product per cached key along the head dimension, then the softmax and
the weighted sum of values. It reads k and v where KVCache keeps them: the views KVCache.write
returns are turned back into the whole C-contiguous cache layer (`_whole_rows`, after checking
the bounds), so the loops see unit strides and vectorise (a strided view does not, 3x slower).
From `DECODE_THREADED_WORK` multiply-adds on (bloom-560m: any batch) the pairs are shared by the
threads through an atomic counter, as in kernels/matvec16.py (~2x on one row at 160 positions).
Other small calls (a few queries) run a per-pair loop on the calling thread: waking BLAS or
numba threads costs more there than the work. Its innermost loops run along contiguous memory
without a reduction (k is transposed once per pair), which the compiler vectorises.

Both agree with the twin to float32 rounding (~1e-7; sums run in a different order).

Leaves out: dropout (ops.py applies it to the returned probabilities, and takes the plain
backward when a keep-mask is present).
"""

import numpy as np

from minibloom.jit import njit, one_at_a_time, prange
from minibloom.kernels.matvec16 import _fetch_add, _num_threads

# Multiply-adds (B * H * T * S * D) up to which the forward runs on one thread (a decode step).
SERIAL_WORK = 1 << 22
# One query per row (T = 1, a decode step) with at least this many multiply-adds: the (b, h)
# pairs are shared by the threads (the keys and values read, 8 bytes per multiply-add, are then
# more than the cost of waking them).
DECODE_THREADED_WORK = 1 << 16


@njit(fastmath={"reassoc", "contract"})
def _dot(a, b):
    """a . b for two float32 vectors (D,), summed in any order (vectorised)."""
    acc = a[0] - a[0]
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(fastmath={"reassoc", "contract"})
def _axpy(c, p, v):
    """c += p * v for vectors (D,)."""
    for i in range(c.shape[0]):
        c[i] += p * v[i]


@njit
def _decode_pair(q, k, v, S, alibi, visible, inv, fmin, probs, ctx, b, h):
    """_attention_pair for one query (T = 1, it sees every cached key): one dot product per key
    along the contiguous head dimension, no transposed copy of k. k, v: (B, H, S_max, D)
    C-contiguous (the whole cache layer), of which keys [0, S) are read."""
    s = probs[b, h, 0]  # (S,) scores, then probabilities
    qv = q[b, h, 0]  # (D,)
    m = fmin
    for j in range(S):
        x = alibi[b, h, j] + _dot(qv, k[b, h, j]) * inv if visible[b, 0, j] else fmin
        s[j] = x
        if x > m:
            m = x
    total = s[0] - s[0]  # zero in the array's dtype
    for j in range(S):
        s[j] = np.exp(s[j] - m)
        total += s[j]
    c = ctx[b, h, 0]  # (D,)
    c[:] = 0
    for j in range(S):
        s[j] = s[j] / total
        if s[j] != 0:  # hidden keys have probability exactly 0
            _axpy(c, s[j], v[b, h, j])


@njit
def _decode_serial(q, k, v, S, alibi, visible, inv, fmin, probs, ctx):
    B, H = q.shape[0], q.shape[1]
    for bh in range(B * H):
        _decode_pair(q, k, v, S, alibi, visible, inv, fmin, probs, ctx, bh // H, bh % H)


@njit(parallel=True)
def _decode_threaded(q, k, v, S, alibi, visible, inv, fmin, probs, ctx, counter, workers):
    """The pairs taken in turn from a shared counter (see kernels/matvec16.py's work splitting)."""
    B, H = q.shape[0], q.shape[1]
    for _ in prange(workers):
        bh = _fetch_add(counter)
        while bh < B * H:
            _decode_pair(q, k, v, S, alibi, visible, inv, fmin, probs, ctx, bh // H, bh % H)
            bh = _fetch_add(counter)


def _whole_rows(k):
    """k (B, H, S, D), a view of the first S positions of a C-contiguous (B, H, S_max, D) buffer
    (what KVCache.write returns) -> that (B, H, S_max, D) buffer as a C-contiguous array, which
    numba's loops read with unit stride (vectorised); any other k -> a C-contiguous copy.
    The buffer is only reconstructed after checking that it lies inside k's base array."""
    B, H, S, D = k.shape
    item = k.itemsize
    if k.flags.c_contiguous:
        return k
    row = D * item
    st = k.strides
    root = k
    while isinstance(root.base, np.ndarray):
        root = root.base
    if st[3] == item and st[2] == row and st[1] % row == 0 and st[0] == H * st[1]:
        s_max = st[1] // row
        start = k.__array_interface__["data"][0]
        base = root.__array_interface__["data"][0]
        if (
            root.flags.c_contiguous
            and s_max >= S
            and base <= start
            and start + B * st[0] <= base + root.nbytes
        ):
            return np.ndarray((B, H, s_max, D), k.dtype, buffer=root, offset=start - base)
    return np.ascontiguousarray(k)


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


@njit
def _attention_serial(q, k, v, alibi, visible, inv, fmin, probs, ctx):
    B, H = q.shape[0], q.shape[1]
    for bh in range(B * H):  # the same loop on the calling thread only
        _attention_pair(q, k, v, alibi, visible, inv, fmin, probs, ctx, bh // H, bh % H)


@njit(parallel=True)
def _mask_scale_shift(scores, alibi, visible, inv, fmin):
    """In place on scores (B, H, T, S) = q @ k^T: alibi + scores * inv, hidden keys fmin, minus the row max.

    Keys after the query (causal) are hidden without being read. A row whose keys are all hidden
    (a left-pad query) becomes fmin - fmin = 0 everywhere, a uniform distribution after the exp,
    as the reference's finfo.min fill gives.
    """
    B, H, T, S = scores.shape
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        for t in range(T):
            n = S - T + t + 1  # causal: keys after this query's position are never visible
            s = scores[b, h, t]
            m = fmin
            for j in range(n):
                x = alibi[b, h, j] + s[j] * inv if visible[b, t, j] else fmin
                s[j] = x
                if x > m:
                    m = x
            for j in range(n):
                s[j] = s[j] - m
            for j in range(n, S):
                s[j] = fmin - m  # -> exp 0, or 0 -> exp 1 in an all-hidden row


@njit(parallel=True)
def _normalise(e):
    """In place on e (B, H, T, S) = exp(shifted scores): each row divided by its sum."""
    B, H, T, S = e.shape
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        for t in range(T):
            s = e[b, h, t]
            total = s[0] - s[0]  # zero in the array's dtype
            for j in range(S):
                total += s[j]
            for j in range(S):
                s[j] = s[j] / total


def attention(q, k, v, alibi, visible, inv):
    """(probs (B, H, T, S), ctx (B, H, T, D)) for the attention above, in q's float dtype."""
    B, H, T, D = q.shape
    S = k.shape[2]
    f = q.dtype.type
    alibi = np.asarray(alibi, dtype=q.dtype)
    visible = np.ascontiguousarray(visible)
    fmin = f(np.finfo(q.dtype).min)
    probs = np.empty((B, H, T, S), dtype=q.dtype)
    ctx = np.empty((B, H, T, D), dtype=q.dtype)
    if T == 1 and B * H * S * D <= SERIAL_WORK:  # a decode step
        k_rows, v_rows = _whole_rows(k), _whole_rows(v)
        args = (
            np.ascontiguousarray(q),
            k_rows,
            v_rows,
            S,
            alibi,
            visible,
            f(inv),
            fmin,
            probs,
            ctx,
        )
        if B * H * S * D < DECODE_THREADED_WORK:
            _decode_serial(*args)
        else:
            _decode_threaded(*args, np.zeros(1, dtype=np.int64), _num_threads())
        return probs, ctx
    if B * H * T * S * D <= SERIAL_WORK:
        # A decode step (one query per row) is a few hundred thousand multiply-adds: less than
        # what waking the worker threads costs on a busy machine (measured ~3 ms per layer), so
        # small calls run on the calling thread.
        _attention_serial(q, k, v, alibi, visible, f(inv), fmin, probs, ctx)
        return probs, ctx
    # A prompt or a training batch: both products in BLAS, the softmax in two threaded passes
    # and NumPy's SIMD exp between them (numba's exp is a scalar call per key, ~8x slower).
    np.matmul(q, k.swapaxes(-1, -2), out=probs)  # (B, H, T, S) scores
    with one_at_a_time():  # (b, h) pairs to whichever thread is free
        _mask_scale_shift(probs, alibi, visible, f(inv), fmin)
    np.exp(probs, out=probs)
    with one_at_a_time():
        _normalise(probs)
    np.matmul(probs, v, out=ctx)  # (B, H, T, D)
    return probs, ctx


# --- backward -----------------------------------------------------------------------------------


@njit(parallel=True)
def _softmax_backward(dp, probs, inv):
    """In place on dp (B, H, T, S) = dctx @ v^T: dscores = probs * (dp - sum_j dp * probs) * inv.

    Keys after the query have probability 0 and get dscores 0 without being read, except in a
    row with no visible key (a left pad), which is uniform over all S keys (future ones too).
    """
    B, H, T, S = dp.shape
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        for t in range(T):
            n = S - T + t + 1  # keys this query could see; probs are 0 beyond ...
            p = probs[b, h, t]
            d = dp[b, h, t]
            if n < S and p[n] != 0:  # ... except in an all-hidden row (uniform)
                n = S
            row = d[0] - d[0]  # sum_j dprobs * probs
            for j in range(n):
                row += d[j] * p[j]
            for j in range(n):
                d[j] = p[j] * (d[j] - row) * inv
            for j in range(n, S):
                d[j] = 0


def attention_backward(dctx, q, k, v, probs, inv):
    """(dq, dk, dv) of ctx = softmax(alibi + q @ k^T * inv, masked) @ v, given probs (no dropout)."""
    f = q.dtype.type
    dv = np.matmul(probs.swapaxes(-1, -2), dctx)  # (B, H, S, D)
    dp = np.matmul(dctx, v.swapaxes(-1, -2))  # (B, H, T, S) dprobs
    with one_at_a_time():  # (b, h) pairs to whichever thread is free
        _softmax_backward(dp, probs, f(inv))  # -> dscores, in place
    dq = np.matmul(dp, k)  # (B, H, T, D)
    dk = np.matmul(dp.swapaxes(-1, -2), q)  # (B, H, S, D)
    return dq, dk, dv
