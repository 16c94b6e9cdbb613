"""Many-row matrix products (prefill, scoring) split into chunks that the threads take in turn.

    y = times_weight_t_split(x2, W, b)     x2 (N, in) float32, W (out, in), b (out,) or None

`x2 @ W.T` as one multi-threaded OpenBLAS call splits the work into one equal part per thread
up front: when another process takes a core, the thread on that core finishes last and the whole
product waits for it (one busy process on 2 cores made torch's prefill 1.9x slower in
benchmarks/bench_forward.py, this one 1.6x). Here the output
columns are cut into chunks (at least TASKS_PER_THREAD per thread, CHUNK_COLS to MAX_CHUNK_COLS
columns each: 16 chunks of 256 for bloom-560m's MLP, 62 of 4096 for its head), and the workers
(the calling thread and a persistent pool) each run single-threaded BLAS on the next free chunk,
so a slowed thread simply takes fewer chunks. Each chunk also gets its bias added while it is in
cache, and a float16 W is widened one chunk at a time (no float32 copy of the whole matrix).

A large output (HUGE_BYTES or more: the LM head's logits, 1 GB at 8 x 128 tokens) is mapped
with transparent huge pages requested (`empty`: mmap + madvise(MADV_HUGEPAGE)). Fresh 4 KB
pages are faulted in one by one while BLAS writes them; measured in this VM, the head's
product into a fresh np.empty output took 2.6 to 6.6 s against 2.6 to 2.9 s into an
already-faulted array or a huge-page one (512x fewer faults, and no slow mode).

The thread count is OpenBLAS's (OPENBLAS_NUM_THREADS, or its default). During a split call
OpenBLAS is set to 1 thread (openblas_set_num_threads; the count is process-wide, so split calls
take a lock and the count is restored when the call ends), so each worker's BLAS call runs in
that worker. When NumPy's BLAS is not an OpenBLAS found in numpy.libs (MKL, Accelerate, a system
BLAS), every function here is one plain NumPy call.

Each output element is one BLAS dot product over the whole `in` axis, as in `x2 @ W.T`; BLAS
may block that sum differently for a chunk than for the whole matrix, so results equal the
reference to float32 rounding (tests/test_ops.py), not bit for bit.
"""

import ctypes
import glob
import itertools
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minibloom.ops import widen

CHUNK_COLS = 256  # fewest output columns (rows of W) per task: 1 MB of a (., 1024) float32 W
MAX_CHUNK_COLS = 4096  # most per task (the LM head: fewer, larger BLAS calls repack x less often)
TASKS_PER_THREAD = 8  # at least this many tasks per thread when W is large enough (balance)
HUGE_BYTES = 64 << 20  # outputs this large are mapped with huge pages requested (`empty`)


def _find_openblas():
    """(set_num_threads, get_num_threads) of NumPy's bundled OpenBLAS, or None."""
    here = os.path.dirname(np.__file__)
    prefixes = ("scipy_openblas_", "openblas_")  # NumPy 2's wheels, then a plain OpenBLAS
    for path in glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in prefixes:
            for suffix in ("64_", ""):
                set_, get = (f"{prefix}{verb}_num_threads{suffix}" for verb in ("set", "get"))
                if hasattr(lib, set_) and hasattr(lib, get):
                    set_, get = getattr(lib, set_), getattr(lib, get)
                    set_.argtypes, set_.restype = [ctypes.c_int], None
                    get.argtypes, get.restype = [], ctypes.c_int
                    return set_, get
    return None


_BLAS = _find_openblas()
_pool = None
_lock = threading.Lock()  # one split call at a time: it sets OpenBLAS's (process-wide) count


def threads():
    """How many threads a split call uses: OpenBLAS's own thread count (1 without OpenBLAS)."""
    return 1 if _BLAS is None else max(1, _BLAS[1]())


def _workers(n):
    """The persistent pool of n - 1 helper threads (the calling thread is the n-th)."""
    global _pool
    if _pool is None or _pool._max_workers != n - 1:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(n - 1, "minibloom-gemm")
    return _pool


def _run(task, n_tasks):
    """task(i) for i in range(n_tasks), spread over threads() workers taking the next free i.

    OpenBLAS's thread count is process-wide (openblas_set_num_threads_local is too, in the
    pthreads builds NumPy ships), so it is 1 while the workers run and restored afterwards."""
    with _lock:
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

        futures = []
        before = _BLAS[1]()
        _BLAS[0](1)  # each worker's BLAS calls run in that worker's thread, single-threaded
        try:
            futures = [_workers(n).submit(work) for _ in range(n - 1)]
            work()  # the calling thread takes chunks too
        finally:
            for f in futures:
                f.exception()  # wait for every worker before the count is restored
            _BLAS[0](before)
        for f in futures:
            f.result()  # re-raises a worker's exception


def empty(shape, dtype=np.float32):
    """np.empty(shape, dtype), but from an anonymous mmap with huge pages requested when it
    takes HUGE_BYTES or more (where the system has madvise(MADV_HUGEPAGE): Linux). The array
    keeps the mapping alive; it is unmapped when the array is freed."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < HUGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP off in this kernel: plain pages, as np.empty would give
        pass
    return np.frombuffer(buffer, dtype).reshape(shape)


def times_weight_t_split(x2, W, b=None):
    """x2 @ W.T (+ b) -> (N, out) float32, in column chunks. x2 (N, in) float32, W (out, in)."""
    N, out = x2.shape[0], W.shape[0]
    if _BLAS is None:
        y = x2 @ widen(W, x2).T
        if b is not None:
            y += widen(b, x2)
        return y
    y = empty((N, out), x2.dtype)  # huge pages for the logits (see the module docstring)
    bias = None if b is None else widen(b, x2)  # bfloat16 words read as bfloat16
    width = min(MAX_CHUNK_COLS, max(CHUNK_COLS, out // (TASKS_PER_THREAD * threads())))

    def task(i):
        cols = slice(i * width, min(out, (i + 1) * width))
        Wc = widen(W[cols], x2)  # a 16-bit W (float16, bfloat16 words) widened chunk by chunk
        yc = y[:, cols]  # (N, chunk), a strided view: BLAS writes it in place
        np.matmul(x2, Wc.T, out=yc)
        if bias is not None:
            yc += bias[cols]

    _run(task, -(-out // width))
    return y
