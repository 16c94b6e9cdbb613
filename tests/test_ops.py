"""ops.py and its fast twins (kernels/ops.py, kernels/attention.py): every backward against float64
central differences, ALiBi slopes/positions against known values, each fast op against its reference."""

import numpy as np
import pytest
from conftest import assert_close

from minibloom import losses, ops
from minibloom.kernels import attention as attention_kernels
from minibloom.kernels import gemm
from minibloom.kernels import ops as fast_ops

EPS = 1e-6  # central-difference step (float64)
GRAD_ATOL, GRAD_RTOL = 1e-7, 1e-6  # analytic vs numeric, float64
TWIN_ATOL = 2e-6  # numba vs NumPy twin, float32 (tanh/exp may differ in the last ulp)


def numeric_grad(f, x, eps=EPS):
    """d f() / d x by central differences, perturbing x in place entry by entry (f reads x)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def check_backward(name, forward, backward, inputs, seed=0):
    """Project the output on a random r, then compare backward(r) with numeric gradients of sum(r * out)."""
    out, cache = forward(*inputs)
    r = np.random.default_rng(seed).standard_normal(out.shape)
    grads = backward(r, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for j, (x, g) in enumerate(zip(inputs, grads)):
        if g is None:
            continue
        num = numeric_grad(lambda: float((forward(*inputs)[0] * r).sum()), x)
        assert_close(f"{name} d(input {j})", g, num, GRAD_ATOL, GRAD_RTOL)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_embedding_backward_accumulates_repeated_ids(rng):
    E = rng.standard_normal((7, 4))
    ids = np.array([[1, 3, 1], [1, 6, 0]])  # id 1 three times
    check_backward(
        "embedding", lambda E: ops.embedding_forward(ids, E), ops.embedding_backward, (E,)
    )


def test_embedding_backward_adds_into_a_given_gradient(rng):
    # the tied-head path: the lookup's scatter-add goes into the head's dE in place
    dx = rng.standard_normal((2, 3, 4)).astype(np.float32)
    ids = np.array([[1, 3, 1], [1, 6, 0]])
    _, cache = ops.embedding_forward(ids, np.zeros((7, 4), np.float32))
    head = rng.standard_normal((7, 4)).astype(np.float32)
    dE = ops.embedding_backward(dx, cache, dE=head.copy())
    assert_close("dE into head", dE, head + ops.embedding_backward(dx, cache), 1e-6, 1e-6)
    untouched = [2, 4, 5]  # ids that never occur keep the head's rows exactly
    assert np.array_equal(dE[untouched], head[untouched])
    given = head.copy()
    assert ops.embedding_backward(dx, cache, dE=given) is given  # in place, no new (V, C) array


def test_layernorm_backward(rng):
    x, w, b = rng.standard_normal((2, 3, 5)) * 2 + 1, rng.standard_normal(5), rng.standard_normal(5)
    check_backward(
        "layernorm",
        lambda x, w, b: ops.layernorm_forward(x, w, b, 1e-5),
        ops.layernorm_backward,
        (x, w, b),
    )


def test_linear_backward(rng):
    x, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((6, 4)), rng.standard_normal(6)
    check_backward("linear", ops.linear_forward, ops.linear_backward, (x, W, b))


def test_gelu_backward(rng):
    x = rng.standard_normal((3, 7)) * 3
    check_backward("gelu", ops.gelu_forward, ops.gelu_backward, (x,))


def test_dropout_backward_reuses_the_mask(rng):
    x = rng.standard_normal((4, 6))
    keep_rng = lambda: np.random.default_rng(5)  # noqa: E731  same mask on every call
    check_backward(
        "dropout", lambda x: ops.dropout_forward(x, 0.3, keep_rng()), ops.dropout_backward, (x,)
    )
    y, cache = ops.dropout_forward(x, 0.3, keep_rng())
    assert cache.keep is not None and 0 < cache.keep.mean() < 1
    assert np.array_equal(y[~cache.keep], np.zeros((~cache.keep).sum()))
    assert ops.dropout_forward(x, 0.0, None)[0] is x


def _attention_inputs(rng, B=2, H=3, T=4, P=2, D=5):
    S = P + T
    q, k, v = (
        rng.standard_normal((B, H, T, D)),
        rng.standard_normal((B, H, S, D)),
        rng.standard_normal((B, H, S, D)),
    )
    mask = np.ones((B, S), dtype=bool)
    mask[0, :2] = False  # left padding
    mask[1, 3] = False  # a hole
    alibi = ops.alibi_bias(mask, ops.alibi_slopes(H)).astype(np.float64)
    return q, k, v, alibi, ops.attention_visibility(mask, T)


@pytest.mark.parametrize("tier", [ops, fast_ops], ids=["reference", "fast"])
@pytest.mark.parametrize("p", [0.0, 0.4])
def test_attention_backward(rng, p, tier):
    q, k, v, alibi, visible = _attention_inputs(rng)
    fwd = lambda q, k, v: tier.attention_forward(
        q, k, v, alibi, visible, p, np.random.default_rng(3)
    )  # noqa: E731
    check_backward("attention", fwd, tier.attention_backward, (q, k, v))


def test_qkv_split_is_head_interleaved_and_merge_inverts_it(rng):
    B, T, H, D = 2, 3, 4, 5
    fused = rng.standard_normal((B, T, 3 * H * D))
    q, k, v = ops.split_heads(fused, H)
    # head h's query is fused rows [h*3D, h*3D + D), its key the next D, its value the next D
    assert np.array_equal(q[:, 1], fused[:, :, 3 * D : 4 * D])
    assert np.array_equal(k[:, 1], fused[:, :, 4 * D : 5 * D])
    assert np.array_equal(v[:, 2], fused[:, :, 8 * D : 9 * D])
    assert np.array_equal(ops.merge_qkv_grads(q, k, v), fused)
    ctx = rng.standard_normal((B, H, T, D))
    assert np.array_equal(ops.split_merged_grad(ops.merge_heads(ctx), H), ctx)


def test_alibi_slopes_known_values():
    assert_close("H=16", ops.alibi_slopes(16), 2.0 ** (-np.arange(1, 17) / 2), 0, 1e-7)
    twelve = [2.0 ** (-k) for k in range(1, 9)] + [2.0 ** (-k / 2) for k in (1, 3, 5, 7)]
    assert_close("H=12", ops.alibi_slopes(12), twelve, 0, 1e-7)
    six = [2.0 ** (-2 * k) for k in range(1, 5)] + [2.0 ** (-k) for k in (1, 3)]
    assert_close("H=6", ops.alibi_slopes(6), six, 0, 1e-7)
    assert ops.alibi_slopes(112).shape == (112,) and ops.alibi_slopes(6).dtype == np.float32


def test_alibi_positions_skip_pads():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 0, 0, 1]], dtype=bool)
    bias = ops.alibi_bias(mask, np.array([1.0, 0.5], dtype=np.float32))
    assert np.array_equal(bias[0, 0], [0, 0, 0, 1, 2])  # left padding restarts at 0
    assert np.array_equal(bias[1, 0], [0, 1, 0, 0, 2])  # a hole is skipped: distance 2, not 4
    assert np.array_equal(bias[1, 1], [0, 0.5, 0, 0, 1])


def test_visibility_is_causal_over_the_cached_past():
    mask = np.array([[0, 1, 1, 1, 1]], dtype=bool)
    vis = ops.attention_visibility(mask, T=2)  # 3 cached, 2 new: queries at absolute 3 and 4
    assert vis.tolist() == [[[False, True, True, True, False], [False, True, True, True, True]]]


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_cross_entropy_backward(rng, reduction):
    logits = rng.standard_normal((2, 3, 5))
    y = np.array([[1, 4, -100], [0, 0, 2]])
    w = rng.uniform(0, 2, size=(2, 3))

    def forward(z):  # the loss as a 0-d array, so check_backward can project it
        loss, cache = losses.softmax_cross_entropy_forward(z, y, w, reduction)
        return np.array(loss), cache

    check_backward(
        "cross-entropy",
        forward,
        lambda r, cache: losses.softmax_cross_entropy_backward(float(r), cache),
        (logits,),
    )


def test_cross_entropy_overwrite_logits_gives_the_same_numbers(rng):
    logits = (rng.standard_normal((2, 3, 50)) * 5).astype(np.float32)
    y = np.array([[1, 49, -100], [0, 0, 2]])
    w = rng.uniform(0, 2, size=(2, 3)).astype(np.float32)
    loss, cache = losses.softmax_cross_entropy_forward(logits, y, w)
    buffer = logits.copy()
    loss_in_place, cache_in_place = losses.softmax_cross_entropy_forward(
        buffer, y, w, overwrite_logits=True
    )
    assert loss_in_place == loss  # the same operations in the same order: bit-identical
    assert np.array_equal(cache_in_place.probs, cache.probs)
    assert cache_in_place.probs is buffer  # the probabilities live in the logits' buffer
    assert np.array_equal(
        losses.softmax_cross_entropy_backward(1.0, cache_in_place),
        losses.softmax_cross_entropy_backward(1.0, cache),
    )


def test_cross_entropy_reductions_differ_by_the_weight_sum(rng):
    logits = rng.standard_normal((2, 4, 6)).astype(np.float32)
    y = rng.integers(0, 6, size=(2, 4))
    w = np.array([[0, 1, 1, 1], [1, 1, 0, 0]], dtype=np.float32)
    mean, _ = losses.softmax_cross_entropy_forward(logits, y, w, "mean")
    keras, _ = losses.softmax_cross_entropy_forward(logits, y, w, "sum_over_batch_size")
    assert keras == pytest.approx(mean * w.sum() / w.size, rel=1e-6)
    # HF's definition: mean over counted targets of -log softmax
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    assert mean == pytest.approx(float(ce[w > 0].mean()), rel=1e-6)


# --- fast twins ----------------------------------------------------------------------------------


def _reference_attention(q, k, v, alibi, visible):
    ctx, cache = ops.attention_forward(q, k, v, alibi, visible)
    return cache.probs, ctx


def test_gelu_uses_hf_constant_and_order():
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    expected = x * 0.5 * (1.0 + np.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))  # HF's expression
    y = ops.gelu_forward(x)[0]
    assert y.dtype == np.float32
    assert_close("gelu vs HF expression", y, expected, 1e-7)


@pytest.mark.parametrize("serial_work", [1 << 62, 0], ids=["loop", "blas"])
def test_attention_numba_matches_reference(rng, monkeypatch, serial_work):
    monkeypatch.setattr(attention_kernels, "SERIAL_WORK", serial_work)  # both forward paths
    q, k, v, alibi, visible = (
        a.astype(np.float32) if a.dtype == np.float64 else a
        for a in _attention_inputs(rng, B=2, H=4, T=6, P=3, D=8)
    )
    (pa, ca), (pb, cb) = (
        attention_kernels.attention(q, k, v, alibi, visible, 1 / np.sqrt(8)),
        _reference_attention(q, k, v, alibi, visible),
    )
    assert pa.dtype == pb.dtype == ca.dtype == cb.dtype == np.float32
    assert_close("probs numba vs plain", pa, pb, TWIN_ATOL)
    assert_close("ctx numba vs plain", ca, cb, TWIN_ATOL)
    assert_close("rows sum to 1", pa.sum(-1), np.ones(pa.shape[:-1]), 1e-6)
    assert (pa[~np.broadcast_to(visible[:, None], pa.shape)] == 0).all()
    # keys read from a KVCache are strided views; the loop must give the same result on them
    big_k, big_v = np.zeros((2, 4, 12, 8), np.float32), np.zeros((2, 4, 12, 8), np.float32)
    big_k[:, :, :9], big_v[:, :, :9] = k, v
    pc, cc = attention_kernels.attention(
        q, big_k[:, :, :9], big_v[:, :, :9], alibi, visible, 1 / np.sqrt(8)
    )
    assert np.array_equal(pc, pa) and np.array_equal(cc, ca)


@pytest.mark.parametrize("serial_work", [1 << 62, 0], ids=["loop", "blas"])
def test_attention_backward_numba_matches_reference(rng, monkeypatch, serial_work):
    monkeypatch.setattr(attention_kernels, "SERIAL_WORK", serial_work)  # both forward paths
    q, k, v, alibi, visible = (
        a.astype(np.float32) if a.dtype == np.float64 else a
        for a in _attention_inputs(rng, B=2, H=4, T=6, P=3, D=8)
    )
    visible = visible.copy()
    visible[0, 0, :] = False  # a query with no visible key (a left pad): uniform over all keys
    probs, _ = attention_kernels.attention(q, k, v, alibi, visible, 1 / np.sqrt(8))
    assert_close("uniform row", probs[0, :, 0], np.full((4, 9), 1 / 9), 1e-7)
    dctx = rng.standard_normal(q.shape).astype(np.float32)
    a = attention_kernels.attention_backward(dctx, q, k, v, probs, 1 / np.sqrt(8))
    b = ops.attention_backward(
        dctx, ops.AttentionCache(q, k, v, probs, ops.DropoutCache(None, 1.0))
    )
    for name, x, y in zip(("dq", "dk", "dv"), a, b):
        assert x.dtype == y.dtype == np.float32
        assert_close(f"{name} numba vs plain", x, y, TWIN_ATOL)


@pytest.mark.parametrize("shape", [(4, 33), (3, 70000)], ids=["serial", "threaded"])
def test_fast_gelu_is_the_reference_expression_bit_for_bit(rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)  # (3, 70000): above SERIAL_ELEMENTS
    y, cache = ops.gelu_forward(x)
    y_fast, cache_fast = fast_ops.gelu_forward(x)
    assert np.array_equal(y, y_fast)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(ops.gelu_backward(dy, cache), fast_ops.gelu_backward(dy, cache_fast))


@pytest.mark.parametrize(
    "rows, dtype", [(2, np.float32), (40, np.float32), (40, np.float16), (40, "bfloat16")]
)
def test_fast_linear_and_head_equal_the_reference(rng, rows, dtype, monkeypatch):
    """A few rows of float32 weights (a decode step) take the matvec32 tiles (the few-row 16-bit
    path is compared in test_decode_paths.py); many rows take kernels/gemm.py's chunked product,
    here in chunks of 5 output columns spread over 2 threads: each output is still one BLAS dot
    product over the whole input axis, but BLAS may block it differently for a chunk. Both:
    float32 rounding. Weights and biases float32, float16 or bfloat16 words (the chunked path
    widens both chunk by chunk and keeps W as stored in the cache for the backward)."""
    monkeypatch.setattr(gemm, "CHUNK_COLS", 5)
    monkeypatch.setattr(gemm, "threads", lambda: 2)
    x = rng.standard_normal((rows, 1, 16)).astype(np.float32)
    W, b = rng.standard_normal((24, 16)).astype(np.float32), rng.standard_normal(24)
    if dtype == "bfloat16":  # bfloat16 words (truncated), the weight and the bias
        W, b = ((a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for a in (W, b))
    else:
        W, b = W.astype(dtype), b.astype(dtype)
    y_fast, cache_fast = fast_ops.linear_forward(x, W, b)
    y, cache = ops.linear_forward(x, W, b)
    assert y_fast.dtype == np.float32 and y_fast.shape == y.shape == (rows, 1, 24)
    assert_close("linear fast vs reference", y_fast, y, 1e-6, rtol=1e-6)
    head_fast, head = fast_ops.lm_head_forward(x, W), ops.lm_head_forward(x, W)
    assert head_fast.dtype == np.float32 and head_fast.shape == head.shape
    assert_close("head fast vs reference", head_fast, head, 1e-6, rtol=1e-6)
    # the cache keeps W as stored (no float32 copy); the backward widens it: the same gradients
    assert cache_fast.W is W and np.array_equal(ops.widen(cache_fast.W, x), cache.W)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for fast, ref in zip(ops.linear_backward(dy, cache_fast), ops.linear_backward(dy, cache)):
        assert np.array_equal(fast, ref)


def test_gemm_split_takes_every_chunk_once_and_reraises(rng, monkeypatch):
    """The chunked product over 3 threads covers a ragged last chunk, reads bfloat16 words as
    bfloat16, and a worker's error reaches the caller."""
    monkeypatch.setattr(gemm, "CHUNK_COLS", 7)
    monkeypatch.setattr(gemm, "threads", lambda: 3)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    W = rng.standard_normal((50, 8)).astype(np.float32)
    assert_close("split product", gemm.times_weight_t_split(x, W), x @ W.T, 1e-6, rtol=1e-6)
    words = (W.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 words (truncated)
    assert_close(
        "split product, bfloat16 words",
        gemm.times_weight_t_split(x, words),
        x @ ops.widen(words, x).T,
        1e-6,
        rtol=1e-6,
    )

    def fail(i):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        gemm._run(fail, 9)


def test_lm_head_backward(rng):
    hidden, E = rng.standard_normal((2, 3, 4)), rng.standard_normal((7, 4))
    check_backward(
        "lm head",
        lambda h, E: (ops.lm_head_forward(h, E), (h, E)),
        lambda d, c: ops.lm_head_backward(d, *c),
        (hidden, E),
    )


@pytest.mark.parametrize("shape", [(2, 100, 37), (3, 90, 64)])
def test_fast_layernorm_matches_reference(rng, shape):
    """More rows than one chunk (the threaded pass), a ragged last chunk, C off the 16 lanes."""
    from minibloom.kernels import layernorm as layernorm_kernels

    assert shape[0] * shape[1] > layernorm_kernels.ROWS
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    w, b = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = ops.layernorm_forward(x, w, b, 1e-5)
    y_fast, cache_fast = fast_ops.layernorm_forward(x, w, b, 1e-5)
    assert y_fast.dtype == cache_fast.norm.dtype == cache_fast.rstd.dtype == np.float32
    assert cache_fast.rstd.shape == cache.rstd.shape
    assert_close("layernorm y", y_fast, y, 1e-5)  # |y| up to ~10: float32 rounding
    assert_close("layernorm norm", cache_fast.norm, cache.norm, 2e-6)
    assert_close("layernorm rstd", cache_fast.rstd, cache.rstd, 1e-6)
    for name, a, r in zip(
        ("dx", "dw", "db"),
        fast_ops.layernorm_backward(dy, cache_fast),
        ops.layernorm_backward(dy, cache),
    ):
        assert a.dtype == np.float32 and a.shape == r.shape
        assert_close(f"layernorm {name}", a, r, 2e-5 * max(1.0, float(np.abs(r).max())))
