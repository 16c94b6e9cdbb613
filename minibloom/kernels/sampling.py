"""Hot loops of token selection: the k best entries of a long row, and the nucleus (top-p) set.

A BLOOM vocabulary row has V = 250,880 logits. Sorting it to find the best few costs ~15 ms per
row; a single pass with a small heap costs ~1 ms. Both functions here have a numba kernel and a
plain NumPy twin (a stable full sort), selected by `minibloom.jit.use_numba()` at call time.

Order convention (shared by both twins, so they return identical ids): candidates are sorted by
value, descending; equal values are ordered by the lower index first, which is what a stable
`argsort(-x)` gives.

Leaves out: the sampler objects, temperature and random draws (samplers.py) and the beam-search
bookkeeping (generate.py; its top-k over `num_beams * V` scores reuses `top_k_indices`).

Shape legend: B batch rows, V row length (vocabulary, or num_beams * vocabulary for beam search),
K number of candidates kept.
"""

import numpy as np

from minibloom.jit import njit, use_numba

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
        if child + 1 < n and _better(heap_v[child], heap_i[child], heap_v[child + 1], heap_i[child + 1]):
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


def _top_k_indices_plain(x, k):
    """Reference: a stable sort of the negated row keeps ties in index order."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k].astype(np.int64)


def top_k_indices(x, k):
    """Indices of the k largest entries of each row, best first (ties: lower index first).

    x: (B, V) float32 or float64; k: 1 <= k <= V. Returns (B, K) int64.
    """
    assert x.ndim == 2 and x.dtype in (np.float32, np.float64), (x.shape, x.dtype)
    V = x.shape[1]
    assert 1 <= k <= V, (k, V)
    if use_numba():
        return _top_k_indices_numba(np.ascontiguousarray(x), int(k))
    return _top_k_indices_plain(x, k)


# -----------------------------------------------------------------------------------------------
# top-p (nucleus) set of one row
# -----------------------------------------------------------------------------------------------


def _nucleus_cut(sorted_probs, p):
    """How many of the best-first probabilities to keep: the smallest prefix whose mass is >= p.

    A token is kept when the mass of the tokens ranked before it is still < p (HF's rule; keras-hub
    uses <=, which differs only at exact ties with p). At least one token is always kept.
    """
    before = np.cumsum(sorted_probs) - sorted_probs  # mass ranked strictly before each token
    return max(1, int(np.count_nonzero(before < p)))


def _top_p_plain(x, p, k):
    """Reference: sort the whole row, softmax, cut."""
    order = np.argsort(-x, kind="stable")
    if k is not None:
        order = order[:k]
    z = np.exp(x.astype(np.float64) - x.max())
    probs = z[order] / z[order].sum() if k is not None else z[order] / z.sum()
    n = _nucleus_cut(probs, p)
    return order[:n].astype(np.int64), probs[:n]


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
    n = _nucleus_cut(probs, p)
    return order[:n], probs[:n]


def top_p_set(x, p, k=None):
    """The nucleus of one row of (temperature-scaled) logits.

    x: (V,) float32 logits; p in (0, 1]; k: optional pre-cut to the k best (then the
    probabilities are renormalised over those k first, as keras-hub's TopPSampler(k=...) does).
    Returns (ids (K,) int64 best first, probs (K,) float64 under the full or k-truncated softmax,
    not renormalised to the kept set).
    """
    assert x.ndim == 1 and x.dtype == np.float32, (x.shape, x.dtype)
    if k is not None:
        k = min(int(k), x.shape[0])
    if use_numba():
        return _top_p_numba(np.ascontiguousarray(x), float(p), k)
    return _top_p_plain(x, float(p), k)
