"""The switch between numba kernels and their plain-NumPy twins.

Every hot loop in minibloom exists twice: a plain Python/NumPy version that is the readable
reference, and a numba version compiled on first use (`cache=True`, so once per clone). Tests
check that both agree. Set the environment variable `MINIBLOOM_NUMBA=0` to run the plain
versions everywhere (useful for debugging, or where numba is unavailable).

numba is optional: when it cannot be imported, `njit` returns the plain Python function
unchanged, `prange` is `range` and `use_numba()` is False, so `import minibloom` and every
command still work (slowly). The compiled-code cache lives next to the sources (`__pycache__`);
on a read-only install numba falls back to its user-wide cache ($NUMBA_CACHE_DIR, else
~/.cache/numba); when no cache directory is writable at all, `njit` compiles without a cache
instead of failing at import.

Usage in a kernel module:

    @njit
    def _merge_numba(...): ...          # compiled, loops

    def _merge_plain(...): ...          # reference

    def merge(...):
        return (_merge_numba if use_numba() else _merge_plain)(...)
"""

import os

try:
    import numba
except ImportError:  # optional: the plain twins run instead
    numba = None

prange = range if numba is None else numba.prange  # parallel loop of a kernel (a plain range without numba)


def use_numba() -> bool:
    """True if numba is installed, unless the environment variable MINIBLOOM_NUMBA is set to "0"."""
    return numba is not None and os.environ.get("MINIBLOOM_NUMBA", "1") != "0"


def njit(*args, **kwargs):
    """`numba.njit` with minibloom's defaults: cached to disk, no Python objects, fastmath off.

    fastmath stays off so that kernels round exactly like the NumPy twins they are tested against.
    Without numba the function is returned as is. If no cache directory is writable (numba raises
    "cannot cache function ...: no locator available"), the kernel is compiled without a cache.
    """
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)

    def decorate(function):
        if numba is None:
            return function
        try:
            return numba.njit(**kwargs)(function)
        except RuntimeError as e:
            if not kwargs.get("cache") or "cannot cache" not in str(e):
                raise
            return numba.njit(**{**kwargs, "cache": False})(function)

    if args and callable(args[0]):
        return decorate(args[0])
    if args:  # a signature: numba.njit("f8(f8)", ...)
        kwargs["signature_or_function"] = args[0]
    return decorate
