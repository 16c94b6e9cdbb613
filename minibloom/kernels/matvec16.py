"""y = x @ W.T for a few rows x (float32) and W stored in 16 bits (F16 or BF16) or in float32.

Decoding one token reads every weight of the model once and does only 2 flops per weight read
and row, so its speed is set by memory bandwidth, not arithmetic: 560M float32 weights are
2.24 GB per token. Keeping the checkpoint's own 16-bit weights and widening them to float32
inside the matrix-vector loop halves the bytes read per token, which raises that ceiling 2x.

Widening, one weight row at a time into a small float32 scratch row that stays in L1, in loops
the compiler vectorises:

    BF16  the top half of a float32:  bits32 = h << 16
    F16   LLVM's `fpext half -> float` (a numba intrinsic, `half_to_float`): on CPUs with F16C
          or AVX-512 it compiles to vcvtph2ps, 16 halves per instruction, subnormal halves
          included at full speed (an earlier version re-biased the exponent with a multiply by
          2**112, which hit microcode assists on the ~0.2% subnormal halves of real weights and
          read at half BF16's speed). The hardware quiets a signalling NaN (sets the top
          mantissa bit) where NumPy keeps the payload as is, so a row holding an inf or nan
          (exponent all ones, never in a trained checkpoint) gets those patched afterwards.

Both are exact (tested over all 65,536 patterns). The dot products are float32; the numba kernel
allows reassociation (fastmath "reassoc") so that they vectorise, hence it agrees with the plain
twin to float32 rounding (~1e-6 relative), not bit for bit. `matvec32` is the same loop on a
float32 W (no widening): for a few rows it reads W at close to the memory bandwidth, where
OpenBLAS's `x @ W.T` with 1-16 rows does not.

Work splitting: the output rows come in chunks of CHUNK rows; each thread takes the next chunk
from a shared counter (an atomic fetch-and-add, `_fetch_add`) until none are left, so when
another process takes a core from one of our threads, the other threads do the remaining chunks
instead of waiting at the end for the stalled thread's fixed share. Small matrices (`SERIAL_WORK`
multiply-adds: a tiny model; bloom-560m's 1024 x 1024 dense is above it and runs threaded) run on
the calling thread: waking threads would cost more.

Bias: an optional b (O,), float32 or in the weight's 16-bit words, is added to each sum as the
tile stores it (one float32 addition, as `x @ W.T + b`), so a decode-step linear is one call
with no widened copy of b and no second pass over y.

Without numba (the reference tier), `njit` is the identity and the intrinsics have Python
stand-ins, so this module still imports and its loops still run (slowly) in the twin tests.

Leaves out: how the model stores 16-bit parameters and when a layer uses this kernel (ops.widen /
kernels/ops.py own that); many rows (prefill and training use BLAS on float32 instead).

Shape legend: N rows of x (batch x new tokens, small), C inputs, O outputs.
"""

import numpy as np

from minibloom.jit import njit, numba, prange

if numba is not None:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def half_to_float(typingctx, h):
        """float32 value of the IEEE half whose bits are the integer h (exact, LLVM fpext)."""
        if not isinstance(h, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            if v.type.width > 16:
                v = builder.trunc(v, ir.IntType(16))
            return builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType())

        return types.float32(h), codegen

    @intrinsic
    def as_float(typingctx, v):
        """A weight word as float32: float32 as is, int16 an F16 word, uint16 a BF16 word."""
        if v == types.float32:
            return types.float32(v), lambda context, builder, signature, args: args[0]
        if v == types.int16:
            return types.float32(v), lambda context, builder, signature, args: builder.fpext(
                builder.bitcast(args[0], ir.HalfType()), ir.FloatType()
            )
        if v == types.uint16:

            def bf16(context, builder, signature, args):
                top = builder.shl(
                    builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16)
                )
                return builder.bitcast(top, ir.FloatType())

            return types.float32(v), bf16
        return None

    @intrinsic
    def _fetch_add(typingctx, counter):
        """counter[0] += 1 atomically; returns the old value (counter: int64 array)."""
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = cgutils.get_item_pointer(
                context, builder, signature.args[0], arr, [context.get_constant(types.intp, 0)]
            )
            one = context.get_constant(types.int64, 1)
            return builder.atomic_rmw("add", ptr, one, "monotonic")

        return types.int64(counter), codegen

    def _num_threads():
        return numba.get_num_threads()
else:  # pragma: no cover - the Python stand-ins of the reference tier

    def half_to_float(h):
        return np.array(h, dtype=np.uint16).view(np.float16).astype(np.float32)[()]

    def as_float(v):
        if v.dtype == np.int16:
            return half_to_float(v)
        if v.dtype == np.uint16:
            return (np.array(v, dtype=np.uint32) << 16).view(np.float32)[()]
        return np.float32(v)

    def _fetch_add(counter):
        old = counter[0]
        counter[0] += 1
        return old

    def _num_threads():
        return 1


def widen16(w, kind):
    """Plain reference: uint16 bit patterns (any shape) -> float32 values, read as `kind`."""
    if kind == "BF16":
        return (w.astype(np.uint32) << 16).view(np.float32)
    if kind == "F16":
        return w.view(np.float16).astype(np.float32)
    raise ValueError(f"kind must be 'F16' or 'BF16', found {kind!r}")


@njit
def _widen_row(row, vals, is_bf16):
    """row (C,) uint16 -> vals (C,) float32 (see the module doc)."""
    C = row.shape[0]
    bits = vals.view(np.uint32)
    if is_bf16:
        for i in range(C):
            bits[i] = np.uint32(row[i]) << np.uint32(16)
        return
    specials = np.uint32(0)  # bit 15 ends up set if some half has the all-ones exponent
    for i in range(C):
        h = row[i]
        vals[i] = half_to_float(h)
        specials |= (np.uint32(h) & np.uint32(0x7C00)) + np.uint32(0x0400)  # 0x7C00 + 0x400
    if specials & np.uint32(0x8000):
        for i in range(C):
            h = np.uint32(row[i])
            if (h & np.uint32(0x7C00)) == np.uint32(0x7C00):  # inf / nan: keep the payload
                bits[i] = (
                    ((h & np.uint32(0x8000)) << np.uint32(16))
                    | np.uint32(0x7F800000)
                    | ((h & np.uint32(0x3FF)) << np.uint32(13))
                )


CHUNK = 32  # output rows per task (a multiple of 4, the tile height)
SERIAL_WORK = 1 << 18  # multiply-adds (N * O * C) up to which the calling thread does it all


@njit(fastmath={"reassoc", "contract"})
def _tile4x4(x, w, b, has_b, out, o, n):
    """out[n:n+4, o:o+4] = x[n:n+4] @ w[o:o+4].T (+ b[o:o+4]): 16 float32 sums, each weight read once."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
    x0, x1, x2, x3 = x[n], x[n + 1], x[n + 2], x[n + 3]
    for i in range(x.shape[1]):
        v0, v1, v2, v3 = as_float(w0[i]), as_float(w1[i]), as_float(w2[i]), as_float(w3[i])
        u0, u1, u2, u3 = x0[i], x1[i], x2[i], x3[i]
        a00 += v0 * u0
        a01 += v1 * u0
        a02 += v2 * u0
        a03 += v3 * u0
        a10 += v0 * u1
        a11 += v1 * u1
        a12 += v2 * u1
        a13 += v3 * u1
        a20 += v0 * u2
        a21 += v1 * u2
        a22 += v2 * u2
        a23 += v3 * u2
        a30 += v0 * u3
        a31 += v1 * u3
        a32 += v2 * u3
        a33 += v3 * u3
    if has_b:
        b0, b1, b2, b3 = as_float(b[o]), as_float(b[o + 1]), as_float(b[o + 2]), as_float(b[o + 3])
        a00, a01, a02, a03 = a00 + b0, a01 + b1, a02 + b2, a03 + b3
        a10, a11, a12, a13 = a10 + b0, a11 + b1, a12 + b2, a13 + b3
        a20, a21, a22, a23 = a20 + b0, a21 + b1, a22 + b2, a23 + b3
        a30, a31, a32, a33 = a30 + b0, a31 + b1, a32 + b2, a33 + b3
    out[n, o], out[n, o + 1], out[n, o + 2], out[n, o + 3] = a00, a01, a02, a03
    out[n + 1, o], out[n + 1, o + 1], out[n + 1, o + 2], out[n + 1, o + 3] = a10, a11, a12, a13
    out[n + 2, o], out[n + 2, o + 1], out[n + 2, o + 2], out[n + 2, o + 3] = a20, a21, a22, a23
    out[n + 3, o], out[n + 3, o + 1], out[n + 3, o + 2], out[n + 3, o + 3] = a30, a31, a32, a33


@njit(fastmath={"reassoc", "contract"})
def _tile4x1(x, w, b, has_b, out, o, n):
    """out[n, o:o+4] = x[n] @ w[o:o+4].T (+ b[o:o+4])."""
    a0 = a1 = a2 = a3 = np.float32(0.0)
    w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
    xn = x[n]
    for i in range(x.shape[1]):
        u = xn[i]
        a0 += as_float(w0[i]) * u
        a1 += as_float(w1[i]) * u
        a2 += as_float(w2[i]) * u
        a3 += as_float(w3[i]) * u
    if has_b:
        a0, a1 = a0 + as_float(b[o]), a1 + as_float(b[o + 1])
        a2, a3 = a2 + as_float(b[o + 2]), a3 + as_float(b[o + 3])
    out[n, o], out[n, o + 1], out[n, o + 2], out[n, o + 3] = a0, a1, a2, a3


@njit(fastmath={"reassoc", "contract"})
def _tile1x1(x, w, b, has_b, out, o, n):
    """out[n, o] = x[n] . w[o] (+ b[o]) (the last O % 4 outputs)."""
    acc = np.float32(0.0)
    wo, xn = w[o], x[n]
    for i in range(x.shape[1]):
        acc += as_float(wo[i]) * xn[i]
    if has_b:
        acc += as_float(b[o])
    out[n, o] = acc


@njit
def _chunk(x, w, b, has_b, out, c):
    """Outputs [c * CHUNK, (c + 1) * CHUNK) of all N rows, in tiles of 4 outputs x 4 rows."""
    N = x.shape[0]
    end = min(w.shape[0], (c + 1) * CHUNK)
    o = c * CHUNK
    while o + 4 <= end:
        n = 0
        while n + 4 <= N:
            _tile4x4(x, w, b, has_b, out, o, n)
            n += 4
        while n < N:
            _tile4x1(x, w, b, has_b, out, o, n)
            n += 1
        o += 4
    while o < end:
        for n in range(N):
            _tile1x1(x, w, b, has_b, out, o, n)
        o += 1


@njit(parallel=True)
def _matvec_numba(x, w, b, has_b, out, counter, workers):
    chunks = (w.shape[0] + CHUNK - 1) // CHUNK
    for _ in prange(workers):  # one worker per thread; each takes chunks until none are left
        c = _fetch_add(counter)
        while c < chunks:
            _chunk(x, w, b, has_b, out, c)
            c = _fetch_add(counter)


@njit
def _matvec_serial(x, w, b, has_b, out):
    for c in range((w.shape[0] + CHUNK - 1) // CHUNK):  # the same chunks, on the calling thread
        _chunk(x, w, b, has_b, out, c)


_NO_BIAS = np.zeros(1, dtype=np.float32)


def _bias_words(b, o):
    """b (O,) as the kernel reads it: float32, or its 16-bit words (uint16 BF16, int16 F16)."""
    if b is None:
        return _NO_BIAS, False
    assert b.shape == (o,), (b.shape, o)
    if b.dtype == np.float16:
        return np.ascontiguousarray(b).view(np.int16), True
    if b.dtype == np.uint16 or b.dtype == np.float32:
        return np.ascontiguousarray(b), True
    return np.ascontiguousarray(b, dtype=np.float32), True


def _matvec(x, w, b=None):
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    b, has_b = _bias_words(b, w.shape[0])
    if x.shape[0] * w.size <= SERIAL_WORK:  # a tiny model: the calling thread does it all
        _matvec_serial(x, w, b, has_b, out)
    else:
        _matvec_numba(x, w, b, has_b, out, np.zeros(1, dtype=np.int64), _num_threads())
    return out


@njit
def _widen_numba(w, is_bf16):
    """numba widening of a whole (O, C) matrix (for the exhaustive test of _widen_row)."""
    out = np.empty(w.shape, dtype=np.float32)
    for o in range(w.shape[0]):
        _widen_row(w[o], out[o], is_bf16)
    return out


def matvec16_plain(x, w, kind):
    """The reference twin: widen the whole weight, then one BLAS call."""
    return x @ widen16(w, kind).T


def matvec16(x, w, kind, b=None):
    """x (N, C) float32, w (O, C) uint16 holding F16 or BF16 bit patterns -> (N, O) float32.

    b: None, or a bias (O,) (float32, float16, or uint16 BF16 words) added to each sum before it
    is stored (one float32 rounding, as `x @ W.T + b`)."""
    assert x.dtype == np.float32 and x.ndim == 2, (x.dtype, x.shape)
    assert w.dtype == np.uint16 and w.ndim == 2 and w.shape[1] == x.shape[1], (
        w.dtype,
        w.shape,
        x.shape,
    )
    if kind not in ("F16", "BF16"):
        raise ValueError(f"kind must be 'F16' or 'BF16', found {kind!r}")
    return _matvec(x, w if kind == "BF16" else w.view(np.int16), b)  # word type = kind


def matvec32(x, w, b=None):
    """x (N, C) float32, w (O, C) float32 -> x @ w.T (+ b) (N, O), the same tiles, no widening."""
    assert x.dtype == w.dtype == np.float32 and x.ndim == w.ndim == 2, (x.dtype, w.dtype)
    assert w.shape[1] == x.shape[1], (w.shape, x.shape)
    return _matvec(x, w, b)
