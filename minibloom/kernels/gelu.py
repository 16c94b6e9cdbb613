"""The tanh GeLU and its backward (fast tier): threaded numba passes around NumPy's SIMD tanh.

The reference is ops.gelu_forward / ops.gelu_backward (HF's expressions on whole arrays, one
temporary per operation). Here a threaded numba pass computes the tanh argument
u = C0 * x * (1 + C1 * x * x), NumPy's tanh runs in place on it (numba's tanh is a scalar call
per element, ~10x slower than NumPy's vectorised one), and a second threaded pass finishes the
expression. Every operation is the reference's, on float32, in the reference's order, without
fused multiply-adds (fastmath stays off), so the results equal the reference bit for bit
(tested); the win is fewer passes over memory and two threads instead of one.

Arrays up to `SERIAL_ELEMENTS` elements (a decode step) run on the calling thread; larger ones
in chunks of `CHUNK` elements handed to the threads one at a time (jit.one_at_a_time).

Leaves out: float64 (the gradient-check truth): kernels/ops.py hands it to the reference.
"""

import numpy as np

from minibloom.jit import njit, one_at_a_time, prange
from minibloom.ops import GELU_C0, GELU_C1, GELU_C2

SERIAL_ELEMENTS = 1 << 16
CHUNK = 1 << 14  # elements per work item of the threaded passes

_C0, _C1, _C2 = np.float32(GELU_C0), np.float32(GELU_C1), np.float32(GELU_C2)
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


@njit
def _argument_span(x, u, lo, hi):
    for i in range(lo, hi):
        xi = x[i]
        u[i] = _C0 * xi * (_ONE + _C1 * xi * xi)  # the reference's tanh argument


@njit
def _forward_span(x, t, lo, hi):
    for i in range(lo, hi):  # t holds tanh(u); becomes y = x * 0.5 * (1 + t)
        t[i] = x[i] * _HALF * (_ONE + t[i])


@njit
def _backward_span(x, t, dy, lo, hi):
    for i in range(lo, hi):  # t holds tanh(u); becomes dx = slope * dy
        xi = x[i]
        ti = t[i]
        slope = _HALF * xi * ((_ONE - ti * ti) * (_C0 + _C2 * xi * xi)) + _HALF * (_ONE + ti)
        t[i] = slope * dy[i]


@njit(parallel=True)
def _argument(x, u):
    N = x.shape[0]
    for c in prange((N + CHUNK - 1) // CHUNK):
        _argument_span(x, u, c * CHUNK, min(c * CHUNK + CHUNK, N))


@njit(parallel=True)
def _forward(x, t):
    N = x.shape[0]
    for c in prange((N + CHUNK - 1) // CHUNK):
        _forward_span(x, t, c * CHUNK, min(c * CHUNK + CHUNK, N))


@njit(parallel=True)
def _backward(x, t, dy):
    N = x.shape[0]
    for c in prange((N + CHUNK - 1) // CHUNK):
        _backward_span(x, t, dy, c * CHUNK, min(c * CHUNK + CHUNK, N))


def _tanh_of_argument(x1):
    u = np.empty_like(x1)
    if x1.size <= SERIAL_ELEMENTS:
        _argument_span(x1, u, 0, x1.size)
    else:
        with one_at_a_time():
            _argument(x1, u)
    np.tanh(u, out=u)
    return u


def gelu(x):
    """y = x * 0.5 * (1 + tanh(C0 * x * (1 + C1 * x * x))) for float32 x, bit for bit as ops.gelu_forward."""
    x1 = np.ascontiguousarray(x).reshape(-1)  # (N,) view
    t = _tanh_of_argument(x1)
    if x1.size <= SERIAL_ELEMENTS:
        _forward_span(x1, t, 0, x1.size)
    else:
        with one_at_a_time():
            _forward(x1, t)
    return t.reshape(x.shape)


def gelu_backward(dy, x):
    """dx = slope(x) * dy for float32 x and dy of one shape, bit for bit as ops.gelu_backward."""
    x1 = np.ascontiguousarray(x).reshape(-1)  # (N,) views
    dy1 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(-1)
    t = _tanh_of_argument(x1)
    if x1.size <= SERIAL_ELEMENTS:
        _backward_span(x1, t, dy1, 0, x1.size)
    else:
        with one_at_a_time():
            _backward(x1, t, dy1)
    return t.reshape(x.shape)
