"""The switch between numba kernels and their plain-NumPy twins.

Every hot loop in minibloom exists twice: a plain Python/NumPy version that is the readable
reference, and a numba version compiled on first use (`cache=True`, so once per clone). Tests
check that both agree. Set the environment variable `MINIBLOOM_NUMBA=0` to run the plain
versions everywhere (useful for debugging, or where numba is unavailable).

Usage in a kernel module:

    @njit
    def _merge_numba(...): ...          # compiled, loops

    def _merge_plain(...): ...          # reference

    def merge(...):
        return (_merge_numba if use_numba() else _merge_plain)(...)
"""

import os

import numba


def use_numba() -> bool:
    """True unless the environment variable MINIBLOOM_NUMBA is set to "0"."""
    return os.environ.get("MINIBLOOM_NUMBA", "1") != "0"


def njit(*args, **kwargs):
    """`numba.njit` with minibloom's defaults: cached to disk, no Python objects, fastmath off.

    fastmath stays off so that kernels round exactly like the NumPy twins they are tested against.
    """
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)
    if args and callable(args[0]):
        return numba.njit(**kwargs)(args[0])
    return numba.njit(*args, **kwargs)
