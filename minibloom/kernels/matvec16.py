"""y = x @ W.T for a few rows x (float32) and a weight W stored in 16 bits (F16 or BF16).

Decoding one token reads every weight of the model once and does only 2 flops per weight read,
so its speed is set by memory bandwidth, not arithmetic: 560M float32 weights are 2.24 GB per
token. Keeping the checkpoint's own 16-bit weights and widening them to float32 inside the
matrix-vector loop halves the bytes read per token, which raises that ceiling about 2x.

Widening, one row at a time into a small float32 scratch row that stays in L1, with integer and
float operations the compiler vectorises:

    BF16  the top half of a float32:          bits32 = h << 16
    F16   move the sign to bit 31 and the rest 13 bits up, bits32 = (h & 0x8000) << 16 |
          (h & 0x7fff) << 13, then re-bias the exponent (15 -> 127) by a multiply,
          value *= 2**112 (exact for normal and subnormal halves); a row holding an inf or nan
          (exponent all ones, never in a trained checkpoint) gets those patched afterwards

Both are exact (tested over all 65,536 patterns). The dot products are float32; the numba kernel
allows reassociation (fastmath "reassoc") so that they vectorise, hence it agrees with the plain
twin to float32 rounding (~1e-6 relative), not bit for bit. Chunks of output rows are split over
threads, except for small matrices (`SERIAL_WORK`), where waking the threads costs more.

Which kinds run today: F16, for models loaded with dtype="float16" (kernels/ops.py calls this for
decode steps). The loader widens BF16 checkpoints to float32 or rounds them to float16, so the
BF16 path is exercised only by its tests until BF16 weights are kept as stored (the
`dtype="auto"` of the performance work); it is exact and ready for that.

Leaves out: how the model stores 16-bit parameters and when a layer uses this kernel (model.py /
kernels/ops.py own that); large N (prefill and training use BLAS on float32 instead).

Shape legend: N rows of x (batch x new tokens, small), C inputs, O outputs.
"""

import numpy as np

from minibloom.jit import njit, prange

_TWO_112 = np.float32(2.0**112)


def widen16(w, kind):
    """Plain reference: uint16 bit patterns (any shape) -> float32 values, read as `kind`."""
    if kind == "BF16":
        return (w.astype(np.uint32) << 16).view(np.float32)
    if kind == "F16":
        return w.view(np.float16).astype(np.float32)
    raise ValueError(f"kind must be 'F16' or 'BF16', found {kind!r}")


@njit
def _widen_row(row, bits, is_bf16):
    """row (C,) uint16 -> bits (C,) uint32 holding the float32 patterns (see the module doc)."""
    C = row.shape[0]
    if is_bf16:
        for i in range(C):
            bits[i] = np.uint32(row[i]) << np.uint32(16)
        return
    specials = np.uint32(0)  # bit 15 ends up set if some half has the all-ones exponent
    for i in range(C):
        h = np.uint32(row[i])
        bits[i] = ((h & np.uint32(0x8000)) << np.uint32(16)) | (
            (h & np.uint32(0x7FFF)) << np.uint32(13)
        )
        specials |= (h & np.uint32(0x7C00)) + np.uint32(0x0400)  # 0x7C00 + 0x400 = 0x8000
    vals = bits.view(np.float32)
    for i in range(C):
        vals[i] = vals[i] * _TWO_112  # exponent bias 15 -> 127
    if specials & np.uint32(0x8000):
        for i in range(C):
            h = np.uint32(row[i])
            if (h & np.uint32(0x7C00)) == np.uint32(
                0x7C00
            ):  # inf / nan: all-ones exponent, same payload
                bits[i] = (
                    ((h & np.uint32(0x8000)) << np.uint32(16))
                    | np.uint32(0x7F800000)
                    | ((h & np.uint32(0x3FF)) << np.uint32(13))
                )


CHUNK = 64  # output rows per task
SERIAL_WORK = 1 << 20  # multiply-adds (N * O * C) up to which the calling thread does it all


@njit(fastmath={"reassoc"})
def _matvec16_chunk(x, w, is_bf16, out, c, bits):
    """Outputs [c * CHUNK, (c + 1) * CHUNK) of all N rows; bits (C,) uint32 is scratch."""
    N, C = x.shape
    vals = bits.view(np.float32)
    for o in range(c * CHUNK, min(w.shape[0], (c + 1) * CHUNK)):
        _widen_row(w[o], bits, is_bf16)  # (C,) one weight row, now float32, in L1
        for n in range(N):
            xn = x[n]
            acc = np.float32(0.0)
            for i in range(C):
                acc += vals[i] * xn[i]
            out[n, o] = acc


@njit(parallel=True)
def _matvec16_numba(x, w, is_bf16, out):
    for c in prange((w.shape[0] + CHUNK - 1) // CHUNK):  # chunks of outputs split over threads
        _matvec16_chunk(x, w, is_bf16, out, c, np.empty(x.shape[1], dtype=np.uint32))


@njit
def _matvec16_serial(x, w, is_bf16, out):
    bits = np.empty(x.shape[1], dtype=np.uint32)
    for c in range((w.shape[0] + CHUNK - 1) // CHUNK):  # the same chunks, on the calling thread
        _matvec16_chunk(x, w, is_bf16, out, c, bits)


@njit
def _widen_numba(w, is_bf16):
    """numba widening of a whole (O, C) matrix (for the exhaustive test of _widen_row)."""
    out = np.empty(w.shape, dtype=np.uint32)
    for o in range(w.shape[0]):
        _widen_row(w[o], out[o], is_bf16)
    return out.view(np.float32)


def matvec16_plain(x, w, kind):
    """The reference twin: widen the whole weight, then one BLAS call."""
    return x @ widen16(w, kind).T


def matvec16(x, w, kind):
    """x (N, C) float32, w (O, C) uint16 holding F16 or BF16 bit patterns -> (N, O) float32."""
    assert x.dtype == np.float32 and x.ndim == 2, (x.dtype, x.shape)
    assert w.dtype == np.uint16 and w.ndim == 2 and w.shape[1] == x.shape[1], (
        w.dtype,
        w.shape,
        x.shape,
    )
    if kind not in ("F16", "BF16"):
        raise ValueError(f"kind must be 'F16' or 'BF16', found {kind!r}")
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    # small matrices (a tiny model): waking threads would cost more than the whole product
    kernel = _matvec16_serial if x.shape[0] * w.size <= SERIAL_WORK else _matvec16_numba
    kernel(np.ascontiguousarray(x), np.ascontiguousarray(w), kind == "BF16", out)
    return out
