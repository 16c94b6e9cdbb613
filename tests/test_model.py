"""model.py, kvcache.py and BloomCausalLM.predict / loss_and_grads.

- float64 gradient check of a tiny model, every parameter tensor type, both residual modes, with dropout
- golden gradients from torch autograd (tools/golden_grads.py): loss and every parameter gradient
- cached decode == full recompute; a left-padded row == the prompt alone; half-precision weights
  widened per layer == converted up front; argument errors
"""

import json

import numpy as np
import pytest
from conftest import assert_close, golden_path
from safetensors.numpy import load_file

from minibloom import BloomBackbone, KVCache, losses
from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import ArgumentError
from minibloom.model import BLOCK_KEYS

GRADCHECK_EPS = 1e-6
GRADCHECK_ATOL, GRADCHECK_RTOL = 1e-8, 1e-5  # float64 analytic vs central differences
GOLDEN_LOSS_RTOL = 1e-6
GOLDEN_GRAD_ATOL, GOLDEN_GRAD_RTOL = (
    1e-6,
    1e-4,
)  # float32 vs torch autograd, per tensor (measured max 2.5e-7)
CACHE_ATOL = 1e-5  # cached decode vs recompute, float32 (different summation lengths in BLAS)
MATVEC16_ATOL = 1e-5  # matvec16's float32 sums vs BLAS's on the same widened weights (hidden ~1)


def tiny(post_ln=False, dropout=0.0, H=3, seed=0, dtype=np.float32):
    """A tiny backbone with healthy-scale random params (non-power-of-two H)."""
    bb = BloomBackbone(
        23,
        2,
        H,
        4 * H,
        dropout=dropout,
        apply_residual_connection_post_layernorm=post_ln,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 1)
    for k, v in bb.params.items():
        scale = 0.1 if ("layernorm" in k or "ln_f" in k or k.endswith("bias")) else 0.4
        base = 1.0 if (("layernorm" in k or "ln_f" in k) and k.endswith("weight")) else 0.0
        bb.params[k] = (base + scale * rng.standard_normal(v.shape)).astype(dtype)
    return bb


def batch(B=2, T=6, V=23, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, T))
    mask = np.ones((B, T), dtype=bool)
    mask[1, :2] = False  # left padding
    mask[0, 3] = False  # a hole
    y = rng.integers(0, V, size=(B, T))
    w = rng.uniform(0.5, 1.5, size=(B, T)) * mask
    return ids, mask, y, w


# --- float64 gradient check ---------------------------------------------------------------------


@pytest.mark.parametrize("post_ln, dropout", [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_gradcheck_every_parameter_type_float64(post_ln, dropout):
    bb = tiny(post_ln, dropout, dtype=np.float64)
    lm = BloomCausalLM(bb)
    ids, mask, y, w = batch()
    x = {"token_ids": ids, "padding_mask": mask}

    def loss():  # forward only; the same dropout masks on every call (a fresh generator, same seed)
        hidden = bb.forward(ids, mask, training=True, rng=np.random.default_rng(7)).hidden
        return losses.softmax_cross_entropy_forward(bb.logits(hidden), y, w)[0]

    _, grads = lm.loss_and_grads(x, y, w, rng=np.random.default_rng(7))
    pick = np.random.default_rng(1)
    names = [
        "word_embeddings.weight",
        "word_embeddings_layernorm.weight",
        "word_embeddings_layernorm.bias",
        "ln_f.weight",
        "ln_f.bias",
    ]
    names += [f"h.{i}.{k}" for i in (0, 1) for k in BLOCK_KEYS]
    for name in names:
        p, g = bb.params[name], grads[name]
        assert g.shape == p.shape and g.dtype == np.float64
        flat = p.reshape(-1)
        idx = pick.choice(flat.size, size=min(4, flat.size), replace=False)
        if (
            name == "word_embeddings.weight"
        ):  # rows of ids that occur (lookup + head) and one that does not
            idx = np.array(
                [
                    ids[0, 0] * p.shape[1],
                    ids[1, 4] * p.shape[1] + 2,
                    int(np.setdiff1d(np.arange(23), ids)[0]) * p.shape[1],
                ]
            )
        num = []
        for i in idx:
            old = flat[i]
            flat[i] = old + GRADCHECK_EPS
            up = loss()
            flat[i] = old - GRADCHECK_EPS
            down = loss()
            flat[i] = old
            num.append((up - down) / (2 * GRADCHECK_EPS))
        assert_close(f"d loss / d {name}", g.reshape(-1)[idx], num, GRADCHECK_ATOL, GRADCHECK_RTOL)


# --- golden gradients from torch autograd -------------------------------------------------------


def load_golden_model(name):
    """The golden checkpoint written by tools/golden_grads.py (read with safetensors directly)."""
    root = golden_path(f"grads/{name}")
    config = BloomConfig.from_json_file(root / "config.json")
    params = {
        k.removeprefix("transformer."): v
        for k, v in load_file(root / "model.safetensors").items()
        if k != "lm_head.weight"
    }
    ref = np.load(root / "reference.npz")
    return BloomCausalLM(BloomBackbone.from_config(config, params)), ref


@pytest.mark.parametrize("model", ["pre_ln", "post_ln"])
@pytest.mark.parametrize("batch_name", ["hf_labels", "weighted"])
def test_golden_grads_match_torch(model, batch_name):
    lm, ref = load_golden_model(model)
    meta = json.loads(str(ref["meta"]))
    assert meta["config"]["n_head"] == 6
    b = {
        k.split(".", 1)[1]: ref[k]
        for k in ref.files
        if k.startswith(batch_name + ".") and ".grad." not in k
    }
    x = {"token_ids": b["token_ids"], "padding_mask": b["padding_mask"]}
    loss, grads = lm.loss_and_grads(x, b["y"], b["sample_weight"])
    assert loss == pytest.approx(float(b["loss"]), rel=GOLDEN_LOSS_RTOL)
    assert set(grads) == set(lm.params)
    for name, g in grads.items():
        assert g.dtype == np.float32
        assert_close(
            f"{model}/{batch_name} grad {name}",
            g,
            ref[f"{batch_name}.grad.{name}"],
            GOLDEN_GRAD_ATOL,
            GOLDEN_GRAD_RTOL,
        )


# --- forward properties ------------------------------------------------------------------------


def test_cached_decode_matches_full_recompute():
    bb = tiny()
    ids, mask, _, _ = batch(T=9)
    full = bb.forward(ids, mask).hidden
    cache = KVCache.for_config(bb.config, batch_size=2, max_length=12)
    parts = [bb.forward(ids[:, :5], mask[:, :5], cache=cache).hidden]  # prefill 5
    for t in range(5, 9):  # then one token at a time; the mask covers past + new
        parts.append(bb.forward(ids[:, t : t + 1], mask[:, : t + 1], cache=cache).hidden)
    assert cache.length == 9
    assert_close(
        "cached vs recomputed hidden",
        np.concatenate(parts, axis=1),
        full,
        CACHE_ATOL,
        where=mask[..., None],
    )
    assert_close(
        "cached vs recomputed logits", bb.logits(parts[-1]), bb.logits(full[:, -1:]), CACHE_ATOL
    )


def test_kvcache_reorder_and_repeat():
    bb = tiny()
    ids, mask, _, _ = batch(T=4)
    cache = KVCache.for_config(bb.config, batch_size=2, max_length=6)
    bb.forward(ids, mask, cache=cache)
    rep = cache.repeat(2)  # rows 0, 0, 1, 1
    assert rep.batch_size == 4 and rep.length == 4
    assert np.array_equal(rep.key[:, 3, :, :4], cache.key[:, 1, :, :4])
    rev = cache.reorder([1, 0])
    nxt = np.array([[5], [7]])
    m2 = np.concatenate([mask, np.ones((2, 1), bool)], axis=1)
    a = bb.forward(nxt[::-1], m2[::-1], cache=rev).hidden
    b = bb.forward(nxt, m2, cache=cache).hidden
    assert_close("reordered cache step", a, b[::-1], 0)
    with pytest.raises(ArgumentError, match="max_length"):
        bb.forward(np.ones((2, 2), int), np.ones((2, 7), bool), cache=cache)


def test_left_padded_row_equals_prompt_alone():
    bb = tiny()
    prompt = np.array([[4, 9, 1, 17, 3]])
    alone = bb.logits(bb.forward(prompt, np.ones((1, 5), bool)).hidden)
    padded_ids = np.array([[3, 3, 3, 4, 9, 1, 17, 3], [1, 2, 3, 4, 5, 6, 7, 8]])
    mask = np.ones((2, 8), bool)
    mask[0, :3] = False
    batched = bb.logits(bb.forward(padded_ids, mask).hidden)
    assert_close("left-padded row vs alone", batched[0, 3:], alone[0], 1e-5)


@pytest.mark.parametrize("numba", ["0", "1"])
def test_half_precision_weights_widened_per_layer_equal_converted_up_front(monkeypatch, numba):
    """B * T = 12 rows: with the fast tier, float16 weights go through the matvec16 kernel, which
    sums in another order (float32 rounding); the reference widens, then multiplies: bit-exact."""
    from minibloom.kernels import gemm

    monkeypatch.setenv("MINIBLOOM_NUMBA", numba)
    bb16 = tiny()
    bb16.params = {k: v.astype(np.float16) for k, v in bb16.params.items()}
    bb32 = BloomBackbone.from_config(
        bb16.config, {k: v.astype(np.float32) for k, v in bb16.params.items()}
    )
    ids, mask, _, _ = batch()
    h16, h32 = bb16.forward(ids, mask).hidden, bb32.forward(ids, mask).hidden
    assert h16.dtype == np.float32
    if numba == "0":
        assert np.array_equal(h16, h32)
        assert np.array_equal(bb16.logits(h16), bb32.logits(h32))
    else:
        assert_close("float16 weights via matvec16 vs float32", h16, h32, MATVEC16_ATOL)
        assert_close(
            "float16 head via matvec16 vs float32",
            bb16.logits(h16),
            bb32.logits(h32),
            MATVEC16_ATOL,
        )
        many = np.concatenate(
            [h32] * 2, axis=1
        )  # 24 rows > MATVEC16_ROWS: the head widens E chunk by chunk (kernels/gemm.py)
        monkeypatch.setattr(gemm, "CHUNK_COLS", 5)
        monkeypatch.setattr(gemm, "threads", lambda: 2)
        # each logit is the same float32 dot product, but BLAS may block columns differently
        # for a 5-row chunk of E than for all of it (seen on AVX-512 OpenBLAS): float32 rounding
        assert_close(
            "float16 head in chunks vs float32", bb16.logits(many), bb32.logits(many), 1e-6
        )


def test_hidden_states_like_hf_and_keras_call():
    bb = tiny()
    ids, mask, _, _ = batch()
    r = bb.forward(ids, mask, output_hidden_states=True)
    assert len(r.hidden_states) == bb.config.n_layer + 1
    assert (
        r.hidden_states[-1] is r.hidden
        and r.hidden.dtype == np.float32
        and r.hidden.shape == (2, 6, 12)
    )
    assert np.array_equal(bb({"token_ids": ids, "padding_mask": mask.astype(int)}), r.hidden)
    lm = BloomCausalLM(bb)
    logits = lm.predict({"token_ids": ids, "padding_mask": mask}, batch_size=1)
    assert logits.dtype == np.float32 and logits.shape == (2, 6, 23)
    # rtol: BLAS (and, for <= 16 rows, the tiled matvec kernels) may group the float32 sums
    # differently for 6 rows than for 12 (seen on AVX-512)
    assert_close("predict vs logits", logits, bb.logits(r.hidden), 1e-5, rtol=1e-5)


def test_loss_reductions_and_default_weights():
    lm = BloomCausalLM(tiny())
    ids, mask, y, _ = batch()
    x = {"token_ids": ids, "padding_mask": mask}
    mean, g_mean = lm.loss_and_grads(x, y)  # default weights: the padding mask
    explicit, _ = lm.loss_and_grads(x, y, mask.astype(np.float32))
    assert mean == explicit
    keras, g_keras = lm.loss_and_grads(x, y, reduction="sum_over_batch_size")
    factor = mask.sum() / mask.size
    assert keras == pytest.approx(mean * factor, rel=1e-6)
    assert_close(
        "keras grads = HF grads * sum(w)/(B*T)",
        g_keras["ln_f.weight"],
        g_mean["ln_f.weight"] * factor,
        1e-7,
        1e-5,
    )


def test_bad_inputs_raise_clear_errors():
    bb = tiny()
    with pytest.raises(ArgumentError, match="token_ids"):
        bb.forward(np.array([[1, 99]]), np.ones((1, 2)))
    with pytest.raises(ArgumentError, match="padding_mask"):
        bb.forward(np.array([[1, 2]]), np.ones((1, 3)))
    with pytest.raises(ArgumentError, match="padding_mask"):
        bb.forward(np.array([[1, 2]]), np.array([[0.5, 1.0]]))
    with pytest.raises(ArgumentError, match="rng"):
        tiny(dropout=0.1).forward(np.array([[1, 2]]), np.ones((1, 2)), training=True)
    with pytest.raises(ArgumentError, match="params"):
        BloomBackbone(23, 1, 3, 12, params={"word_embeddings.weight": np.zeros((23, 12))})
    with pytest.raises(ArgumentError, match="y"):
        losses.softmax_cross_entropy_forward(np.zeros((1, 2, 5), np.float32), np.array([[1, 5]]))


def test_random_init_like_hf():
    bb = BloomBackbone(50, 2, 4, 16, seed=3)
    p = bb.params
    assert all(v.dtype == np.float32 for v in p.values())
    assert np.all(p["h.0.input_layernorm.weight"] == 1) and np.all(
        p["h.1.mlp.dense_h_to_4h.bias"] == 0
    )
    assert abs(p["word_embeddings.weight"].std() - 0.02) < 0.003
    assert np.array_equal(
        BloomBackbone(50, 2, 4, 16, seed=3).params["h.1.self_attention.dense.weight"],
        p["h.1.self_attention.dense.weight"],
    )


def test_backward_from_dhidden_is_the_seam_for_a_head_of_ones_own():
    """keras' BloomBackbone outputs hidden states; a user with their own head backpropagates from
    dhidden. Through the tied head: backward(dlogits, hidden) == backward(dhidden = dlogits @ E)
    plus the head's dE = dlogits^T @ hidden on the embedding."""
    bb = tiny()
    ids, mask, _, _ = batch()
    out = bb.forward(ids, mask, training=True)
    dlogits = np.random.default_rng(3).standard_normal((*ids.shape, 23)).astype(np.float32)
    E = bb.params["word_embeddings.weight"]
    via_head = bb.backward(out.saved, dlogits=dlogits, hidden=out.hidden)
    via_hidden = bb.backward(out.saved, dhidden=dlogits @ E)
    head_dE = dlogits.reshape(-1, 23).T @ out.hidden.reshape(-1, out.hidden.shape[-1])
    for k in via_head:
        extra = head_dE if k == "word_embeddings.weight" else 0.0
        assert_close(k, via_head[k], via_hidden[k] + extra, 1e-5, 1e-5)
