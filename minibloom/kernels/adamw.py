"""The fused AdamW update of one parameter tensor (fast tier): one numba loop over the elements.

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

from minibloom.jit import njit


@njit
def _adamw_update_numba(
    p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size
):
    # p, g, m, v: (N,) float32, flat views of one parameter tensor and its state; updated in place.
    for i in range(p.shape[0]):
        gi = g[i]
        pi = p[i] * decay
        mi = m[i] + one_minus_b1 * (gi - m[i])
        vi = v[i] * b2 + one_minus_b2 * gi * gi
        denom = np.sqrt(vi) / bc2_sqrt + eps
        p[i] = pi - step_size * mi / denom
        m[i] = mi
        v[i] = vi


def adamw_update(p, g, m, v, *, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    """minibloom.optim.adamw_update, fused: p, g, m, v float32 C-contiguous of one shape, in place."""
    args = (p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1))  # (N,) views, no copies
    _adamw_update_numba(*args, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size)
