"""numba, optional: the decorator the fast tier compiles with, and the switch that turns it off.

The reference tier (ops.py, model.py, losses, optim, samplers, tokenizer) never imports numba.
The fast tier (minibloom/kernels/) compiles its loops with `njit` from here and is used only when
`use_numba()` is true: numba is installed and the environment variable MINIBLOOM_NUMBA is not
"0". Without numba, `njit` returns the Python function unchanged and `prange` is `range`, so the
kernel modules still import (and their loops still run, slowly, in the twin tests).

Compiled kernels are cached on disk (`cache=True`): next to the package when it is writable, else
in numba's user-wide cache directory (or $NUMBA_CACHE_DIR). Where neither can be written (a
read-only install with a read-only home), numba refuses to cache; `njit` then compiles without a
cache instead of failing the import.
"""

import os

try:
    import numba
except ImportError:  # the reference tier runs without it
    numba = None

prange = range if numba is None else numba.prange


def use_numba() -> bool:
    """True when numba is installed and MINIBLOOM_NUMBA is not "0"."""
    return numba is not None and os.environ.get("MINIBLOOM_NUMBA", "1") != "0"


def one_at_a_time():
    """Context for calling threaded (prange) kernels: numba hands out their iterations one at a
    time (dynamic scheduling) instead of one equal share per thread, so a thread that another
    process (or an OpenBLAS worker still spinning after a matmul) delays takes fewer iterations
    instead of holding up the call. Without numba, a no-op."""
    return _NoNumba() if numba is None else numba.parallel_chunksize(1)


class _NoNumba:
    """one_at_a_time() without numba: a context that does nothing."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def njit(*args, **kwargs):
    """`numba.njit` with minibloom's defaults: cached to disk, nogil, fastmath off.

    fastmath stays off so that kernels round exactly like the NumPy twins they are tested against.
    """
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)

    def compile_(f):
        if numba is None:
            return f
        try:
            return numba.njit(**kwargs)(f)
        except (
            RuntimeError
        ) as e:  # "cannot cache function ...: no locator available": read-only everywhere
            if not kwargs.get("cache") or "cannot cache" not in str(e):
                raise
            return numba.njit(**{**kwargs, "cache": False})(f)

    if args and callable(args[0]):
        return compile_(args[0])
    if args:
        raise TypeError("njit: pass options as keywords")
    return compile_
