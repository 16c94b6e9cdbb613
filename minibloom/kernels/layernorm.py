"""LayerNorm forward and backward (fast tier): one threaded numba pass over the rows.

The reference is ops.layernorm_forward / ops.layernorm_backward (NumPy expressions over whole
(N, C) arrays: about ten passes over memory, each allocating a temporary, on one thread). Here
each row is read and written once, rows are handed to the threads in chunks of `ROWS` (one at a
time, jit.one_at_a_time), and the row sums run in `LANES` interleaved float32 partial sums that
the compiler vectorises without reordering anything else. The backward's column sums (dw, db)
are summed per chunk of rows and the chunks' partial sums added in chunk order, so the result
does not depend on which thread ran which chunk.

The sums run in another order than NumPy's pairwise ones: results agree with the twin to
float32 rounding (tested), not bit for bit.

Leaves out: float64 (kernels/ops.py hands it to the reference).
"""

import numpy as np

from minibloom.jit import njit, one_at_a_time, prange
from minibloom.kernels.matvec16 import as_float

LANES = 16  # partial sums per row sum (one AVX-512 register of float32)
ROWS = 64  # rows per work item


@njit(inline="always")
def _row_dot(a, b, C):
    """sum_j a[j] * b[j] in LANES interleaved partial sums (a vectorised loop), then the tail."""
    acc = np.zeros(LANES, dtype=a.dtype)
    full = C - C % LANES
    for j in range(0, full, LANES):
        for lane in range(LANES):
            acc[lane] += a[j + lane] * b[j + lane]
    total = a[0] - a[0]
    for lane in range(LANES):
        total += acc[lane]
    for j in range(full, C):
        total += a[j] * b[j]
    return total


@njit
def layernorm_rows(x, w, b, eps, ones, y, norm, rstd):
    """x (N, C) float32, w/b (C,) float32 or 16-bit words (see matvec16.as_float) -> y, norm
    (N, C) and rstd (N,) filled in place, as ops.layernorm_forward computes them."""
    N, C = x.shape
    for i in range(N):
        xi = x[i]
        ni = norm[i]
        mean = _row_dot(xi, ones, C) / C
        for j in range(C):
            ni[j] = xi[j] - mean  # xc
        var = _row_dot(ni, ni, C) / C  # biased
        r = np.float32(1.0) / np.sqrt(var + eps)
        rstd[i] = r
        for j in range(C):
            n = ni[j] * r
            ni[j] = n
            y[i, j] = n * as_float(w[j]) + as_float(b[j])


@njit(parallel=True)
def _forward(x, w, b, eps, ones, y, norm, rstd):
    N = x.shape[0]
    for c in prange((N + ROWS - 1) // ROWS):  # chunks of ROWS rows, one task each
        lo, hi = c * ROWS, min(c * ROWS + ROWS, N)
        layernorm_rows(x[lo:hi], w, b, eps, ones, y[lo:hi], norm[lo:hi], rstd[lo:hi])


@njit(parallel=True)
def _backward(dy, norm, rstd, w, ones, dx, dw_parts, db_parts):
    N, C = dy.shape
    for c in prange((N + ROWS - 1) // ROWS):
        dwc = dw_parts[c]
        dbc = db_parts[c]
        dwc[:] = 0
        dbc[:] = 0
        for i in range(c * ROWS, min(c * ROWS + ROWS, N)):
            d = dy[i]
            n = norm[i]
            g = dx[i]  # g = dy * w, then dx in place
            for j in range(C):
                dwc[j] += d[j] * n[j]
                dbc[j] += d[j]
                g[j] = d[j] * w[j]
            mg = _row_dot(g, ones, C) / C
            mgn = _row_dot(g, n, C) / C
            r = rstd[i]
            for j in range(C):
                g[j] = (g[j] - mg - n[j] * mgn) * r


def _words(a):
    """A float32 or 16-bit parameter as the loops read it (float16 as int16 words, see as_float)."""
    return a.view(np.int16) if a.dtype == np.float16 else a


def layernorm(x, w, b, eps):
    """(y, norm, rstd (..., 1)) of ops.layernorm_forward for float32 x (..., C); w, b (C,) float32,
    float16 or bfloat16 words, read as stored. Up to ROWS rows (a decode step) the calling thread
    runs the row loop alone (waking threads would cost more); more rows are split in chunks."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C)
    N = x2.shape[0]
    y = np.empty_like(x2)
    norm = np.empty_like(x2)
    rstd = np.empty(N, dtype=np.float32)
    args = (x2, _words(w), _words(b), np.float32(eps), np.ones(C, np.float32), y, norm, rstd)
    if N <= ROWS:
        layernorm_rows(*args)
    else:
        with one_at_a_time():
            _forward(*args)
    shape = x.shape[:-1]
    return y.reshape(x.shape), norm.reshape(x.shape), rstd.reshape(*shape, 1)


def layernorm_backward(dy, norm, rstd, w):
    """(dx, dw, db) of ops.layernorm_backward for float32 arrays."""
    C = norm.shape[-1]
    dy2 = np.ascontiguousarray(dy, dtype=norm.dtype).reshape(-1, C)  # (N, C)
    n2 = norm.reshape(-1, C)
    N = dy2.shape[0]
    chunks = (N + ROWS - 1) // ROWS
    dx = np.empty_like(dy2)
    dw_parts = np.empty((chunks, C), dtype=dy2.dtype)
    db_parts = np.empty((chunks, C), dtype=dy2.dtype)
    with one_at_a_time():
        _backward(dy2, n2, rstd.reshape(-1), w, np.ones(C, dy2.dtype), dx, dw_parts, db_parts)
    return dx.reshape(norm.shape), dw_parts.sum(axis=0), db_parts.sum(axis=0)
