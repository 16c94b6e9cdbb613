"""LayerNorm of a few rows (a decode step) on the calling thread, reading w and b as stored.

ops.layernorm_forward on one row of 1024 runs about ten NumPy calls (each a temporary, plus
widening a 16-bit w and b), ~30 us, twice per layer and token; this loop does the same
arithmetic in one pass over the row (~2 us). kernels/layernorm.py's threaded pass is for many
rows; this runs the same row loop (`layernorm.layernorm_rows`) on the calling thread, with w and
b as stored, so it also agrees with the reference to float32 rounding (tests/test_decode_paths.py).

Leaves out: float64 (the reference runs), the backward (few-row caches hold the widened w).
"""

import numpy as np

from minibloom.kernels.layernorm import layernorm_rows

ROWS = 16  # up to this many rows (B * T) take this loop


def _words(a):
    """A float32 or 16-bit parameter as the loop reads it (float16 as int16 words)."""
    return a.view(np.int16) if a.dtype == np.float16 else a


def layernorm(x, w, b, eps):
    """(y, norm, rstd (..., 1)) of ops.layernorm_forward for float32 x (..., C) of few rows."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C)
    N = x2.shape[0]
    y = np.empty_like(x2)
    norm = np.empty_like(x2)
    rstd = np.empty(N, dtype=np.float32)
    layernorm_rows(x2, _words(w), _words(b), np.float32(eps), _ones(C), y, norm, rstd)
    return y.reshape(x.shape), norm.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)


_ONES = {}


def _ones(C):
    if C not in _ONES:
        _ONES[C] = np.ones(C, dtype=np.float32)
    return _ONES[C]
