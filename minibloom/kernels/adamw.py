"""The fused AdamW update of one parameter tensor (fast tier): one numba loop over the elements.

Tensors of more than `SERIAL_ELEMENTS` elements are cut into chunks of `CHUNK` elements that the
numba threads take one at a time (a thread that another process delays takes fewer chunks
instead of holding up the others); smaller ones (biases, LayerNorm weights) run on the calling
thread, where waking the workers would cost more than the update. Each element's arithmetic is
the same whichever thread does it, so the threaded loop equals the serial one bit for bit.

The reference is `minibloom.optim.adamw_update` (the same statements on whole arrays, each line
allocating a temporary); this loop does them per element in one pass over p, g, m and v.
Everything computed once per step (learning rate, bias corrections, weight-decay groups,
clipping) stays in `minibloom/optim.py`.

The arithmetic follows `torch.optim.AdamW` (the single-tensor CPU path) operation by operation,
in float32, so that both twins round like torch does:

    p  = p * (1 - lr * wd)                     decoupled weight decay, applied first
    m  = m + (1 - beta_1) * (g - m)            torch writes this as m.lerp_(g, 1 - beta_1)
    v  = v * beta_2 + (1 - beta_2) * g * g
    p  = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)

with step_size = lr / (1 - beta_1**t) and bc2_sqrt = sqrt(1 - beta_2**t): eps is added after the
square root and after the bias correction of v, as torch does (not inside the sqrt).
The scalars arrive already rounded to float32 by the caller.
"""

import numpy as np

from minibloom.jit import njit, one_at_a_time, prange

SERIAL_ELEMENTS = 1 << 16  # up to this many elements, the calling thread does the whole update
CHUNK = 1 << 15  # elements per work item of the threaded loop (128 KiB of each array)


@njit
def _adamw_span(
    p, g, m, v, lo, hi, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size
):
    # p, g, m, v: (N,) float32, flat views of one parameter tensor and its state; elements
    # [lo, hi) updated in place.
    for i in range(lo, hi):
        gi = g[i]
        pi = p[i] * decay
        mi = m[i] + one_minus_b1 * (gi - m[i])
        vi = v[i] * b2 + one_minus_b2 * gi * gi
        denom = np.sqrt(vi) / bc2_sqrt + eps
        p[i] = pi - step_size * mi / denom
        m[i] = mi
        v[i] = vi


@njit
def _adamw_serial(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    _adamw_span(
        p, g, m, v, 0, p.shape[0], decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size
    )


@njit(parallel=True)
def _adamw_threaded(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    N = p.shape[0]
    for c in prange((N + CHUNK - 1) // CHUNK):  # chunks handed to whichever thread is free
        lo = c * CHUNK
        hi = min(lo + CHUNK, N)
        _adamw_span(
            p, g, m, v, lo, hi, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size
        )


def adamw_update(p, g, m, v, *, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    """minibloom.optim.adamw_update, fused: p, g, m, v float32 C-contiguous of one shape, in place."""
    args = (p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1))  # (N,) views, no copies
    scalars = (decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size)
    if p.size <= SERIAL_ELEMENTS:
        _adamw_serial(*args, *scalars)
        return
    with one_at_a_time():
        _adamw_threaded(*args, *scalars)
