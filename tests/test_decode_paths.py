"""The fast paths of a decode step (minibloom/kernels/), each against its reference twin.

- attention: the single-thread loop used for small calls (a decode step), the BLAS + threaded
  softmax path used for large ones (a prompt), and the NumPy twin agree, on KV-cache views with
  padding;
- linear with float16 weights and few rows: the matvec16 kernel (widens inside its tiles)
  agrees with widening the whole weight first; its plain twin is bit-exact; the backward still works;
- float32 weights and few rows: matvec32 (serial and threaded) agrees with BLAS; the few-row
  branches of kernels/ops.py agree with the reference for float32, float16 and bfloat16 words;
- a whole greedy decode with float16 weights gives the same tokens with numba and without;
- KVCache.reorder(in_place=True) (beam search) equals the copying reorder.
"""

import numpy as np
import pytest
from conftest import assert_close

from minibloom import ops
from minibloom.errors import ArgumentError
from minibloom.generate import decode_steps
from minibloom.kernels import attention as attention_kernels
from minibloom.kernels import ops as fast_ops
from minibloom.kvcache import KVCache
from minibloom.model import BloomBackbone
from minibloom.samplers import GreedySampler

TWIN_ATOL = 1e-6  # numba loop vs NumPy twin, float32, values ~1 (sums in another order)
MATVEC16_ATOL = 1e-5  # matvec16 float32 sums vs BLAS on the same widened weights, outputs ~3


def _cached_attention_inputs(rng, B=3, H=4, P=7, T=1, D=8, S_max=16):
    """q (B, H, T, D) and k/v as views of a bigger cache (B, H, P + T, D), left padding in row 1."""
    S = P + T
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    big_k = rng.standard_normal((B, H, S_max, D)).astype(np.float32)
    big_v = rng.standard_normal((B, H, S_max, D)).astype(np.float32)
    mask = np.ones((B, S), dtype=bool)
    mask[1, :3] = False
    alibi = ops.alibi_bias(mask, ops.alibi_slopes(H))
    visible = ops.attention_visibility(mask, T)
    return q, big_k[:, :, :S], big_v[:, :, :S], alibi, visible


@pytest.mark.parametrize("T", [1, 5])
def test_attention_serial_threaded_and_plain_agree(monkeypatch, T):
    q, k, v, alibi, visible = _cached_attention_inputs(np.random.default_rng(T), T=T)
    assert not k.flags.c_contiguous  # a strided view, as KVCache.write returns
    results = {}
    # (SERIAL_WORK, DECODE_THREADED_WORK): with T = 1 the first two take the decode loop (one
    # dot product per key) on one thread and on all threads; the last one BLAS + fused softmax
    for name, serial_work, decode_threaded in (
        ("serial", 1 << 62, 1 << 62),
        ("serial, decode threaded", 1 << 62, 0),
        ("threaded", 0, 0),
    ):
        monkeypatch.setattr(attention_kernels, "SERIAL_WORK", serial_work)
        monkeypatch.setattr(attention_kernels, "DECODE_THREADED_WORK", decode_threaded)
        results[name] = attention_kernels.attention(q, k, v, alibi, visible, 1 / np.sqrt(8))
    ctx, cache = ops.attention_forward(q, k, v, alibi, visible)  # the reference
    pp, cp = cache.probs, ctx
    for name, (p, c) in results.items():
        assert p.dtype == c.dtype == np.float32
        assert_close(f"probs {name} vs plain", p, pp, TWIN_ATOL)
        assert_close(f"ctx {name} vs plain", c, cp, TWIN_ATOL)
        assert (p[~np.broadcast_to(visible[:, None], p.shape)] == 0).all()  # pads get no weight


def test_decode_attention_reads_the_cache_rows_in_place_or_copies():
    """The decode loop reads k/v as whole (B, H, S_max, D) cache layers when the view allows it
    (KVCache.write's views), else a contiguous copy; the first S keys are k's either way."""
    big = np.random.default_rng(0).standard_normal((2, 3, 4, 9, 8)).astype(np.float32)
    k = big[1, :, :, :5]  # a KVCache.write view: layer 1, 5 of 9 positions
    rows = attention_kernels._whole_rows(k)
    assert rows.shape == (3, 4, 9, 8) and rows.flags.c_contiguous and np.shares_memory(rows, big)
    np.testing.assert_array_equal(rows[:, :, :5], k)
    other = big[1, :, :2, :5]  # not every head: no whole layer to read, so a copy
    copied = attention_kernels._whole_rows(other)
    assert copied.shape == other.shape and not np.shares_memory(copied, big)
    np.testing.assert_array_equal(copied, other)


def test_decode_step_attention_takes_the_decode_loop_and_prompt_blas():
    B, H, D, S = 8, 16, 64, 192  # bloom-560m at batch 8, one new token after 191 cached
    assert B * H * 1 * S * D <= attention_kernels.SERIAL_WORK
    assert 1 * H * 1 * 129 * D >= attention_kernels.DECODE_THREADED_WORK  # threaded from B = 1
    assert 1 * H * 128 * 128 * D > attention_kernels.SERIAL_WORK  # a 128-token prompt


@pytest.mark.parametrize("rows", [1, 3, fast_ops.MATVEC16_ROWS])
def test_linear_float16_few_rows_uses_matvec16_and_agrees(monkeypatch, rows):
    rng = np.random.default_rng(rows)
    W16 = (0.05 * rng.standard_normal((40, 64))).astype(np.float16)
    b = rng.standard_normal(40).astype(np.float32)
    x = rng.standard_normal((rows, 1, 64)).astype(np.float32)
    ref, ref_cache = ops.linear_forward(x, W16.astype(np.float32), b)
    fast, cache = fast_ops.linear_forward(x, W16, b)
    assert fast.dtype == np.float32 and fast.shape == (rows, 1, 40)
    assert cache.W.dtype == np.float16  # not widened: the kernel read the stored 16-bit words
    assert_close("linear float16 via matvec16 vs float32", fast, ref, MATVEC16_ATOL)
    dy = rng.standard_normal(fast.shape).astype(np.float32)
    for name, g, g_ref in zip(
        ("dx", "dW", "db"), ops.linear_backward(dy, cache), ops.linear_backward(dy, ref_cache)
    ):
        assert g.dtype == np.float32
        assert_close(f"linear float16 backward {name}", g, g_ref, 1e-6)
    plain, _ = ops.linear_forward(x, W16, b)
    assert np.array_equal(plain, ref)  # the reference widens, then the same BLAS call


def test_linear_float16_many_rows_widens_for_blas(monkeypatch):
    """Many rows: BLAS on W widened chunk by chunk; the cache keeps W as stored (no float32
    copy), and the backward widens it."""
    rng = np.random.default_rng(0)
    W16 = rng.standard_normal((24, 32)).astype(np.float16)
    x = rng.standard_normal((fast_ops.MATVEC16_ROWS + 1, 32)).astype(np.float32)
    y, cache = fast_ops.linear_forward(x, W16, np.zeros(24, np.float32))
    assert cache.W is W16
    assert np.array_equal(y, x @ W16.astype(np.float32).T)
    dx, dW, _ = ops.linear_backward(np.ones_like(y), cache)
    assert dx.dtype == dW.dtype == np.float32
    assert np.array_equal(dx, np.ones_like(y) @ W16.astype(np.float32))


def _tiny_float16():
    bb = BloomBackbone(50, 2, 4, 32, seed=1)
    rng = np.random.default_rng(2)
    for key, value in bb.params.items():
        if value.ndim == 2:  # larger weights than the default init so that greedy ids vary
            bb.params[key] = (0.3 * rng.standard_normal(value.shape)).astype(np.float16)
        else:
            bb.params[key] = value.astype(np.float16)
    return bb


def test_float16_greedy_decode_same_ids_with_and_without_numba(monkeypatch):
    bb = _tiny_float16()
    ids = np.array([[3, 3, 7, 11, 2], [5, 9, 14, 1, 30]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=bool)
    runs = {}
    for numba in ("1", "0"):
        monkeypatch.setenv("MINIBLOOM_NUMBA", numba)
        runs[numba] = np.stack(
            [nxt for _, nxt, _ in decode_steps(bb, ids, mask, 17, GreedySampler())], axis=1
        )
    assert runs["1"].shape == (2, 12)
    assert len(np.unique(runs["1"])) > 3  # not one repeated token
    np.testing.assert_array_equal(runs["1"], runs["0"])


def test_float16_cached_step_logits_equal_float32_model(monkeypatch):
    """One decode step (B * T = 2 rows: the matvec16 path, LM head included) vs the same weights in float32."""
    monkeypatch.setenv("MINIBLOOM_NUMBA", "1")
    bb16 = _tiny_float16()
    bb32 = BloomBackbone.from_config(
        bb16.config, {k: v.astype(np.float32) for k, v in bb16.params.items()}
    )
    ids = np.array([[3, 7, 11, 2], [5, 9, 14, 1]])
    logits = []
    for bb in (bb16, bb32):
        cache = KVCache.for_config(bb.config, 2, 8)
        bb.forward(ids, np.ones((2, 4), bool), cache=cache)
        h = bb.forward(np.array([[4], [6]]), np.ones((2, 5), bool), cache=cache).hidden
        logits.append(bb.logits(h))
    assert logits[0].dtype == np.float32
    assert_close("float16 decode step logits vs float32", logits[0], logits[1], MATVEC16_ATOL, 1e-5)


def test_kvcache_reorder_in_place_equals_copy():
    rng = np.random.default_rng(0)
    cache = KVCache(2, 4, 3, 10, 5)
    cache.key[:, :, :, :6] = rng.standard_normal((2, 4, 3, 6, 5))
    cache.value[:, :, :, :6] = rng.standard_normal((2, 4, 3, 6, 5))
    cache.advance(6)
    index = np.array([2, 2, 0, 3])  # a duplicate, a move, a dropped row
    copied = cache.reorder(index)
    same = cache.reorder(index, in_place=True)
    assert same is cache and copied is not cache and same.length == copied.length == 6
    np.testing.assert_array_equal(same.key[:, :, :, :6], copied.key[:, :, :, :6])
    np.testing.assert_array_equal(same.value[:, :, :, :6], copied.value[:, :, :, :6])
    with pytest.raises(ArgumentError, match="in_place needs 4 row indices, found 2"):
        cache.reorder([0, 1], in_place=True)


@pytest.mark.parametrize("kind", ["F16", "BF16"])
def test_matvec16_serial_threaded_and_plain_agree(monkeypatch, kind):
    from minibloom.kernels import matvec16 as mv

    rng = np.random.default_rng(1)
    W = (0.05 * rng.standard_normal((mv.CHUNK * 3 + 5, 70))).astype(
        np.float32
    )  # a partial last chunk
    w16 = (
        (W.view(np.uint32) >> 16).astype(np.uint16)
        if kind == "BF16"
        else W.astype(np.float16).view(np.uint16)
    )
    x = rng.standard_normal((2, 70)).astype(np.float32)
    b = rng.standard_normal(W.shape[0]).astype(np.float32)  # a bias in the weight's format
    b16 = (b.view(np.uint32) >> 16).astype(np.uint16) if kind == "BF16" else b.astype(np.float16)
    results = {}
    for name, serial_work in (("serial", 1 << 62), ("threaded", 0)):
        monkeypatch.setattr(mv, "SERIAL_WORK", serial_work)
        results[name] = mv.matvec16(x, w16, kind)
        results[name + " + b"] = mv.matvec16(x, w16, kind, b16)
    results["plain"] = mv.matvec16_plain(x, w16, kind)
    assert np.array_equal(results["serial"], results["threaded"])  # the same chunk loop
    assert np.array_equal(results["serial + b"], results["threaded + b"])
    b_plain = mv.widen16(b16.view(np.uint16), kind)
    assert_close(
        f"matvec16 {kind} + b vs plain",
        results["serial + b"],
        results["plain"] + b_plain,
        1e-6,
        1e-5,
    )
    assert_close(
        f"matvec16 {kind} serial vs plain", results["serial"], results["plain"], 1e-6, 1e-5
    )


@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_matvec32_serial_threaded_and_blas_agree(monkeypatch, rows):
    """Few-row float32 weights (a decode step of a float32 model): the tiled kernel, on one
    thread and on many (chunks from the atomic counter), vs BLAS; the rows do not fill whole
    4 x 4 tiles and the outputs do not fill whole chunks."""
    from minibloom.kernels import matvec16 as mv

    rng = np.random.default_rng(rows)
    W = rng.standard_normal((mv.CHUNK * 5 + 3, 70)).astype(np.float32)
    x = rng.standard_normal((rows, 70)).astype(np.float32)
    b = rng.standard_normal(W.shape[0]).astype(np.float32)
    results = {}
    for name, serial_work in (("serial", 1 << 62), ("threaded", 0)):
        monkeypatch.setattr(mv, "SERIAL_WORK", serial_work)
        results[name] = mv.matvec32(x, W)
        results[name + " + b"] = mv.matvec32(x, W, b)
    assert np.array_equal(results["serial"], results["threaded"])  # the same tiles
    assert np.array_equal(results["serial + b"], results["threaded + b"])
    assert_close("matvec32 vs BLAS", results["serial"], x @ W.T, 1e-5, 1e-6)
    assert_close("matvec32 + b vs BLAS", results["serial + b"], x @ W.T + b, 1e-5, 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_decode_size_linear_and_head_agree_with_the_reference(monkeypatch, dtype):
    """kernels/ops.py's few-row branches (times_weight_t) for every in-memory weight dtype,
    bfloat16 being uint16 words, vs the reference's widen-then-BLAS."""
    from minibloom.io.safetensors import f32_to_bf16

    rng = np.random.default_rng(2)
    W32 = (0.1 * rng.standard_normal((200, 48))).astype(np.float32)
    b32 = rng.standard_normal(200).astype(np.float32)
    cast = {
        "float32": lambda a: a,
        "float16": lambda a: a.astype(np.float16),
        "bfloat16": f32_to_bf16,
    }
    W, b = cast[dtype](W32), cast[dtype](b32)  # the bias added by the kernel, in its dtype
    x = rng.standard_normal((4, 2, 48)).astype(np.float32)  # 8 rows
    fast, cache = fast_ops.linear_forward(x, W, b)
    assert cache.W.dtype == W.dtype  # read as stored, not widened
    assert_close(f"linear {dtype}", fast, ops.linear_forward(x, W, b)[0], 1e-6, 1e-6)
    assert_close(
        f"head {dtype}", fast_ops.lm_head_forward(x, W), ops.lm_head_forward(x, W), 1e-6, 1e-6
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 5])
def test_decode_layernorm_agrees_with_the_reference(dtype, rows):
    """kernels/layernorm.py's few-row LayerNorm (the row loop on the calling thread, w and b read
    as stored) vs ops.layernorm_forward."""
    from minibloom.io.safetensors import f32_to_bf16

    rng = np.random.default_rng(rows)
    x = (3 + 2 * rng.standard_normal((rows, 1, 70))).astype(np.float32)
    w32, b32 = rng.standard_normal((2, 70)).astype(np.float32)
    cast = {
        "float32": lambda a: a,
        "float16": lambda a: a.astype(np.float16),
        "bfloat16": f32_to_bf16,
    }
    w, b = cast[dtype](w32), cast[dtype](b32)
    y, cache = fast_ops.layernorm_forward(x, w, b, 1e-5)
    y_ref, cache_ref = ops.layernorm_forward(x, w, b, 1e-5)
    assert y.shape == y_ref.shape and cache.rstd.shape == cache_ref.rstd.shape
    assert_close(f"layernorm {dtype} y", y, y_ref, 1e-5, 1e-6)
    assert_close(f"layernorm {dtype} norm", cache.norm, cache_ref.norm, 1e-5, 1e-6)
    assert_close(f"layernorm {dtype} rstd", cache.rstd, cache_ref.rstd, 1e-6, 1e-6)
    np.testing.assert_array_equal(cache.w, cache_ref.w)  # widened, for a backward
