"""Many-row matrix products (prefill, scoring) split into chunks that the threads take in turn.

    y = times_weight_t_split(x2, W, b)     x2 (N, in) float32, W (out, in), b (out,) or None
    y = elementwise_split(fn, x)           fn(x_rows, y_rows) over row chunks of x, in parallel

`x2 @ W.T` as one multi-threaded OpenBLAS call splits the work into one equal part per thread
up front: when another process takes a core, the thread on that core finishes last and the whole
product waits for it (measured: half speed with one busy process on 2 cores). Here the output
columns are cut into chunks of CHUNK_COLS (one chunk of W stays in cache), and `threads` workers
(the calling thread and a persistent pool) each run single-threaded BLAS on the next free chunk,
so a slowed thread simply takes fewer chunks. Each chunk also gets its bias added while it is in
cache, and a float16 W is widened one chunk at a time (no float32 copy of the whole matrix).

The thread count is OpenBLAS's (OPENBLAS_NUM_THREADS, or its default); worker threads set their
own OpenBLAS count to 1 with `openblas_set_num_threads_local` (OpenBLAS >= 0.3.27, as bundled by
NumPy 2), and the calling thread does so only for the duration of a call. When NumPy's BLAS is
not an OpenBLAS that has it (MKL, Accelerate, older OpenBLAS), every function here is one plain
NumPy call.

Each output element is one BLAS dot product over the whole `in` axis, as in `x2 @ W.T`; BLAS
may block that sum differently for a chunk than for the whole matrix, so results equal the
reference to float32 rounding (tests/test_ops.py), not bit for bit.
"""

import ctypes
import glob
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_COLS = 256  # output columns (rows of W) per task: 1 MB of a (., 1024) float32 W
CHUNK_ROWS = 16  # rows per task of elementwise_split: (16, 4096) float32 = 256 KB


def _find_openblas():
    """(set_num_threads_local, get_num_threads) of NumPy's bundled OpenBLAS, or None."""
    here = os.path.dirname(np.__file__)
    for path in glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
            local = lib.openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        get = next(
            (
                getattr(lib, name)
                for name in (
                    "scipy_openblas_get_num_threads64_",
                    "openblas_get_num_threads64_",
                    "openblas_get_num_threads",
                )
                if hasattr(lib, name)
            ),
            None,
        )
        if get is None:
            continue
        local.argtypes, local.restype = [ctypes.c_int], ctypes.c_int
        get.argtypes, get.restype = [], ctypes.c_int
        return local, get
    return None


_BLAS = _find_openblas()
_pool = None
_pool_lock = threading.Lock()


def threads():
    """How many threads a split product uses: OpenBLAS's own thread count (1 without OpenBLAS)."""
    return 1 if _BLAS is None else max(1, _BLAS[1]())


def _workers(n):
    """The persistent pool of n - 1 helper threads (the caller is the n-th), each with 1 BLAS thread."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != n - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n - 1, "minibloom-gemm", initializer=_BLAS[0], initargs=(1,))
        return _pool


def _run(task, n_tasks):
    """task(i) for i in range(n_tasks), spread over threads() workers taking the next free i."""
    n = min(threads(), n_tasks)
    if n <= 1:
        for i in range(n_tasks):
            task(i)
        return
    counter = itertools.count()  # next() on it is atomic under the GIL

    def work():
        for i in iter(counter.__next__, None):
            if i >= n_tasks:
                return
            task(i)

    futures = [_workers(n).submit(work) for _ in range(n - 1)]
    previous = _BLAS[0](1)  # the calling thread works too, with one BLAS thread
    try:
        work()
    finally:
        _BLAS[0](previous)
        for f in futures:
            f.result()  # re-raises a worker's exception


def times_weight_t_split(x2, W, b=None):
    """x2 @ W.T (+ b) -> (N, out) float32, in column chunks. x2 (N, in) float32, W (out, in)."""
    N, out = x2.shape[0], W.shape[0]
    if _BLAS is None:
        y = x2 @ np.asarray(W, dtype=x2.dtype).T
        if b is not None:
            y += np.asarray(b, dtype=x2.dtype)
        return y
    y = np.empty((N, out), dtype=x2.dtype)
    bias = None if b is None else np.asarray(b, dtype=x2.dtype)

    def task(i):
        cols = slice(i * CHUNK_COLS, min(out, (i + 1) * CHUNK_COLS))
        Wc = np.asarray(W[cols], dtype=x2.dtype)  # a float16 W widened one chunk at a time
        yc = y[:, cols]  # (N, chunk), a strided view: BLAS writes it in place
        np.matmul(x2, Wc.T, out=yc)
        if bias is not None:
            yc += bias[cols]

    _run(task, -(-out // CHUNK_COLS))
    return y


def elementwise_split(fn, x, dtype=None):
    """y = new array like x; fn(x[rows], y[rows]) for chunks of CHUNK_ROWS rows, in parallel.

    x (..., C): the chunks are of the flattened (N, C) rows. fn must fill its y rows from its x
    rows only (an elementwise op), so the result is the same as one call on the whole array.
    """
    x2 = x.reshape(-1, x.shape[-1])  # (..., C) -> (N, C)
    y2 = np.empty(x2.shape, dtype=x.dtype if dtype is None else dtype)
    N = x2.shape[0]

    def task(i):
        rows = slice(i * CHUNK_ROWS, min(N, (i + 1) * CHUNK_ROWS))
        fn(x2[rows], y2[rows])

    if _BLAS is None:
        fn(x2, y2)
    else:
        _run(task, -(-N // CHUNK_ROWS))
    return y2.reshape(x.shape)  # (N, C) -> (..., C)
