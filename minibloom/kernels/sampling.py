"""The fast twins of the cuts in samplers.py: the k best entries of a long row, and the nucleus.

A BLOOM vocabulary row has V = 250,880 logits. The references (`samplers.top_k_indices`,
`samplers.top_p_set`) sort the whole row, ~15 ms per row; a single pass with a small heap costs
~1 ms. Same signatures, same ids (ties: the lower index first, as a stable argsort of -x);
`minibloom.dispatch.fast_or_reference` chooses them. tests/test_samplers.py checks the twins agree.

Leaves out: the sampler objects, temperature and random draws (samplers.py) and the beam-search
bookkeeping (generate.py; its top-k over `num_beams * V` scores reuses `top_k_indices`).

Shape legend: B batch rows, V row length (vocabulary, or num_beams * vocabulary for beam search),
K number of candidates kept.
"""

import numpy as np

from minibloom.jit import njit
from minibloom.samplers import nucleus_cut

# -----------------------------------------------------------------------------------------------
# top-k indices of each row
# -----------------------------------------------------------------------------------------------


@njit
def _better(va, ia, vb, ib):
    """True if entry (va, ia) ranks before (vb, ib): larger value, ties to the lower index."""
    return va > vb or (va == vb and ia < ib)


@njit
def _sift_down(heap_v, heap_i, pos, n):
    """Restore the heap below `pos`. The heap keeps the WORST kept entry at the root."""
    while True:
        child = 2 * pos + 1
        if child >= n:
            return
        # pick the worse of the two children
        if child + 1 < n and _better(
            heap_v[child], heap_i[child], heap_v[child + 1], heap_i[child + 1]
        ):
            child += 1
        if _better(heap_v[child], heap_i[child], heap_v[pos], heap_i[pos]):
            return  # the child ranks before pos: heap order holds
        heap_v[pos], heap_v[child] = heap_v[child], heap_v[pos]
        heap_i[pos], heap_i[child] = heap_i[child], heap_i[pos]
        pos = child


@njit
def _top_k_indices_numba(x, k):
    """x: (B, V) float32 -> (B, K) int64 indices, sorted best first. One pass with a size-k heap."""
    B, V = x.shape
    out = np.empty((B, k), dtype=np.int64)
    heap_v = np.empty(k, dtype=x.dtype)
    heap_i = np.empty(k, dtype=np.int64)
    for b in range(B):
        row = x[b]
        # seed the heap with the first k entries, then heapify
        for j in range(k):
            heap_v[j] = row[j]
            heap_i[j] = j
        for j in range(k // 2 - 1, -1, -1):
            _sift_down(heap_v, heap_i, j, k)
        # scan the rest: an entry enters only if it ranks before the worst kept one (the root)
        root_v = heap_v[0]
        for j in range(k, V):
            v = row[j]
            if v > root_v:  # (ties lose: j is a higher index than everything already kept)
                heap_v[0] = v
                heap_i[0] = j
                _sift_down(heap_v, heap_i, 0, k)
                root_v = heap_v[0]
        # heap sort: repeatedly move the worst entry to the back of the output
        for n in range(k, 0, -1):
            out[b, n - 1] = heap_i[0]
            heap_v[0] = heap_v[n - 1]
            heap_i[0] = heap_i[n - 1]
            _sift_down(heap_v, heap_i, 0, n - 1)
    return out


def top_k_indices(x, k):
    """samplers.top_k_indices, one heap pass per row. x: (B, V) float32 or float64, 1 <= k <= V."""
    assert x.ndim == 2 and x.dtype in (np.float32, np.float64) and 1 <= k <= x.shape[1], (
        x.shape,
        x.dtype,
        k,
    )
    return _top_k_indices_numba(np.ascontiguousarray(x), int(k))


# -----------------------------------------------------------------------------------------------
# top-p (nucleus) set of one row
# -----------------------------------------------------------------------------------------------


def _top_p_numba(x, p, k):
    """Fast path: the nucleus is usually small, so rank only the best 64 entries first and widen
    the window (x4) while their mass is still below p. The normaliser is one pass over the row."""
    z = np.exp(x.astype(np.float64) - x.max())
    if k is not None:
        order = _top_k_indices_numba(x[None, :], k)[0]
        probs = z[order] / z[order].sum()  # the pre-cut renormalises over the k best
    else:
        total, V = z.sum(), x.shape[0]
        window = min(64, V)
        while True:
            order = _top_k_indices_numba(x[None, :], window)[0]
            probs = z[order] / total
            if np.cumsum(probs)[-1] >= p or window == V:  # same sum as _nucleus_cut's
                break
            window = min(window * 4, V)
    n = nucleus_cut(probs, p)
    return order[:n], probs[:n]


def top_p_set(x, p, k=None):
    """samplers.top_p_set: rank only the best entries the nucleus needs. x: (V,) float32."""
    assert x.ndim == 1 and x.dtype == np.float32, (x.shape, x.dtype)
    return _top_p_numba(
        np.ascontiguousarray(x), float(p), None if k is None else min(int(k), x.shape[0])
    )
