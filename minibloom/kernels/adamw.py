"""The fused AdamW update of one parameter tensor: numba loop and its plain-NumPy twin.

This file holds only the element-wise arithmetic of one step. Everything that is computed once
per step (the learning rate from the schedule, bias corrections, which tensors get weight decay,
gradient clipping) lives in `minibloom/optim.py`, which calls `adamw_update` once per tensor.

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

from minibloom.jit import njit, use_numba


@njit
def _adamw_update_numba(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
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


def _adamw_update_plain(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    # The same statements as the loop above, on whole arrays (each line allocates a temporary).
    p *= decay
    m += one_minus_b1 * (g - m)
    v *= b2
    v += one_minus_b2 * g * g
    denom = np.sqrt(v) / bc2_sqrt + eps
    p -= step_size * m / denom


def adamw_update(p, g, m, v, *, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    """One AdamW step on one tensor, in place on `p`, `m` and `v`.

    Args:
        p, g, m, v: float32 C-contiguous arrays of one shape (parameter, gradient, first and
            second moment). `g` is read only.
        decay ... step_size: np.float32 scalars, see the module docstring.
    """
    f32 = np.float32
    args = (p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1))  # (N,) views, no copies
    scalars = (f32(decay), f32(one_minus_b1), f32(b2), f32(one_minus_b2), f32(bc2_sqrt), f32(eps), f32(step_size))
    (_adamw_update_numba if use_numba() else _adamw_update_plain)(*args, *scalars)
