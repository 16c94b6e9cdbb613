"""AdamW, schedules, clipping and accumulation against torch / transformers on random tensors.

The 10-step training parity on a real model is in test_train.py; here the optimizer is checked
on its own, with gradients drawn at random, so a failure points at optim.py and nothing else.
"""

import math

import numpy as np
import pytest
from conftest import assert_close, requires_transformers

from minibloom import optim
from minibloom.errors import ArgumentError, TrainingError
from minibloom.kernels import adamw as adamw_kernel
from minibloom.optim import (
    BIAS_AND_NORM,
    AdamW,
    ConstantSchedule,
    GradientAccumulator,
    WarmupCosineSchedule,
    WarmupLinearSchedule,
    clip_grad_norm,
    get_schedule,
    global_norm,
)

# float32 AdamW vs torch: the update is ~lr per step, rounding differs by an ulp or so per op.
PARAM_ATOL = 2e-7
MOMENT_RTOL = 1e-6

SHAPES = {
    "h.0.mlp.dense_h_to_4h.weight": (12, 5),
    "h.0.mlp.dense_h_to_4h.bias": (12,),
    "ln_f.weight": (5,),
    "word_embeddings.weight": (7, 5),
}


def _random_params(seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _random_grads(rng, scale=1.0):
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def _torch_adamw_run(params, grad_seq, lr, weight_decay, no_decay=(), clip=None, lr_lambda=None):
    """torch.optim.AdamW on copies of `params`, fed the gradients in `grad_seq`."""
    import torch

    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    decay = [p for k, p in tp.items() if not any(s in k for s in no_decay)]
    nodecay = [p for k, p in tp.items() if any(s in k for s in no_decay)]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if nodecay:
        groups.append({"params": nodecay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
    norms = []
    for grads in grad_seq:
        for k, p in tp.items():
            p.grad = torch.tensor(grads[k])
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)))
        opt.step()
        if sched:
            sched.step()
    state = {k: opt.state[p] for k, p in tp.items()}
    return (
        {k: p.detach().numpy() for k, p in tp.items()},
        {k: s["exp_avg"].numpy() for k, s in state.items()},
        {k: s["exp_avg_sq"].numpy() for k, s in state.items()},
        norms,
    )


@requires_transformers
@pytest.mark.parametrize("numba", ["1", "0"])
def test_adamw_matches_torch(monkeypatch, numba):
    """Ten steps with weight decay, decay exclusion, clipping and a warmup+cosine schedule."""
    monkeypatch.setenv("MINIBLOOM_NUMBA", numba)
    rng = np.random.default_rng(1)
    grad_seq = [_random_grads(rng, scale=3.0) for _ in range(10)]
    sched = WarmupCosineSchedule(1e-2, warmup_steps=3, total_steps=10)
    ref_p, ref_m, ref_v, ref_norms = _torch_adamw_run(
        _random_params(0),
        grad_seq,
        lr=1e-2,
        weight_decay=0.1,
        no_decay=BIAS_AND_NORM,
        clip=1.0,
        lr_lambda=lambda s: sched(s) / 1e-2,
    )

    params = _random_params(0)
    opt = AdamW(
        sched, weight_decay=0.1, exclude_from_weight_decay=BIAS_AND_NORM, global_clipnorm=1.0
    )
    norms = []
    for grads in grad_seq:
        g = {k: v.copy() for k, v in grads.items()}
        norms.append(global_norm(g))
        opt.apply(params, g)
    assert opt.step == 10
    assert_close("clip norms", norms, ref_norms, atol=0, rtol=1e-6)
    for k in SHAPES:
        assert_close(f"param {k}", params[k], ref_p[k], atol=PARAM_ATOL)
        assert_close(f"m {k}", opt.m[k], ref_m[k], atol=1e-8, rtol=MOMENT_RTOL)
        assert_close(f"v {k}", opt.v[k], ref_v[k], atol=1e-10, rtol=MOMENT_RTOL)


@requires_transformers
def test_adamw_plain_decay_matches_torch_default_group():
    """No exclusion, constant lr, no clipping: torch's AdamW with one parameter group."""
    rng = np.random.default_rng(2)
    grad_seq = [_random_grads(rng) for _ in range(5)]
    ref_p, _, _, _ = _torch_adamw_run(_random_params(3), grad_seq, lr=3e-3, weight_decay=0.01)
    params = _random_params(3)
    opt = AdamW(3e-3)
    for g in grad_seq:
        opt.apply(params, g)
    for k in SHAPES:
        assert_close(f"param {k}", params[k], ref_p[k], atol=PARAM_ATOL)


def test_adamw_first_step_by_hand():
    """Step 1 of Adam moves every entry by lr * sign(g) (m_hat/sqrt(v_hat) = g/|g|), after decay."""
    p = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
    g = {"w": np.array([0.3, -4.0, 1e-3], np.float32)}
    AdamW(0.1, weight_decay=0.5, epsilon=1e-12).apply(p, g)
    expected = np.array([1.0, -2.0, 0.5]) * (1 - 0.1 * 0.5) - 0.1 * np.sign([0.3, -4.0, 1e-3])
    assert_close("first step", p["w"], expected, atol=1e-6)


def test_fused_update_equals_the_reference():
    rng = np.random.default_rng(4)
    n = 1000
    start = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    start[2] = np.abs(start[2])  # v >= 0
    g = rng.standard_normal(n).astype(np.float32)
    scalars = dict(
        decay=np.float32(0.999),
        one_minus_b1=np.float32(0.1),
        b2=np.float32(0.999),
        one_minus_b2=np.float32(0.001),
        bc2_sqrt=np.float32(0.05),
        eps=np.float32(1e-8),
        step_size=np.float32(0.01),
    )
    a = [x.copy() for x in start]
    b = [x.copy() for x in start]
    adamw_kernel.adamw_update(a[0], g, a[1], a[2], **scalars)
    optim.adamw_update(b[0], g, b[1], b[2], **scalars)
    for name, x, y in zip("pmv", a, b):
        assert_close(f"fused vs reference {name}", x, y, atol=0, rtol=2e-7)


@requires_transformers
@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedules_match_transformers(kind):
    import torch
    import transformers

    make = {
        "constant": transformers.get_constant_schedule_with_warmup,
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
    }[kind]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    ref = make(opt, 4) if kind == "constant" else make(opt, 4, 20)
    ours = get_schedule(kind, 0.5, warmup_steps=4, total_steps=20)
    for step in range(25):
        assert math.isclose(ours(step), ref.get_last_lr()[0], rel_tol=1e-12, abs_tol=1e-15), (
            kind,
            step,
        )
        opt.step()
        ref.step()


def test_schedule_shapes():
    s = WarmupLinearSchedule(1.0, 2, 6)
    assert [s(i) for i in range(8)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert ConstantSchedule(0.3)(100) == 0.3
    with pytest.raises(ArgumentError, match="total_steps"):
        get_schedule("cosine", 1.0)
    with pytest.raises(ArgumentError, match="'constant', 'linear' or 'cosine'"):
        get_schedule("step", 1.0)


@requires_transformers
def test_clip_grad_norm_matches_torch():
    import torch

    rng = np.random.default_rng(5)
    for max_norm in (0.5, 1e6):  # clipped, and left alone
        grads = _random_grads(rng)
        tgrads = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES.values()]
        for t, g in zip(tgrads, grads.values()):
            t.grad = torch.tensor(g)
        ref_norm = float(torch.nn.utils.clip_grad_norm_(tgrads, max_norm))
        norm = clip_grad_norm(grads, max_norm)
        assert math.isclose(norm, ref_norm, rel_tol=1e-6)
        for t, g in zip(tgrads, grads.values()):
            assert_close("clipped grad", g, t.grad.numpy(), atol=1e-7, rtol=1e-6)


def test_clip_rejects_non_finite():
    grads = {"a": np.array([1.0, np.inf], np.float32)}
    with pytest.raises(TrainingError, match="norm"):
        clip_grad_norm(grads, 1.0)


def test_gradient_accumulator_equals_one_big_batch():
    """Per-token gradients averaged per micro-batch, then accumulated, equal the big-batch mean."""
    rng = np.random.default_rng(6)
    per_token = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 8, 1)]
    acc = GradientAccumulator()
    for tok in per_token:
        acc.add({"w": tok.mean(0)}, n_tokens=len(tok))
    big = np.concatenate(per_token).mean(0)
    assert_close("accumulated", acc.result()["w"], big, atol=1e-6)
    with pytest.raises(TrainingError):
        GradientAccumulator().result()


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(7)
    grad_seq = [_random_grads(rng) for _ in range(6)]
    sched = WarmupCosineSchedule(1e-2, 2, 6)
    p1 = _random_params(8)
    o1 = AdamW(sched)
    for g in grad_seq:
        o1.apply(p1, g)

    p2 = _random_params(8)
    o2 = AdamW(sched)
    for g in grad_seq[:3]:
        o2.apply(p2, g)
    sd = o2.state_dict()
    state = {
        "step": sd["step"],
        "m": {n: a.copy() for n, a in sd["m"].items()},
        "v": {n: a.copy() for n, a in sd["v"].items()},
    }
    o3 = AdamW(sched)
    o3.load_state_dict(state)
    for g in grad_seq[3:]:
        o3.apply(p2, g)
    for k in SHAPES:
        np.testing.assert_array_equal(p1[k], p2[k])
        np.testing.assert_array_equal(o1.v[k], o3.v[k])


def test_bad_arguments():
    with pytest.raises(ArgumentError, match="beta_1"):
        AdamW(1e-3, beta_1=1.0)
    with pytest.raises(ArgumentError, match="learning_rate"):
        AdamW("fast")
    p = {"w": np.zeros(3, np.float32)}
    with pytest.raises(ArgumentError, match="missing gradients"):
        AdamW(1e-3).apply(p, {})
    with pytest.raises(ArgumentError, match="w: expected float32"):
        AdamW(1e-3).apply(p, {"w": np.zeros(3)})


def test_adamw_threaded_chunks_equal_the_serial_loop_bit_for_bit(monkeypatch):
    monkeypatch.setattr(adamw_kernel, "SERIAL_ELEMENTS", 0)  # the threaded loop, whatever the size
    rng = np.random.default_rng(5)
    n = 3 * adamw_kernel.CHUNK + 17  # four chunks, the last one ragged
    start = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    start[2] = np.abs(start[2])
    g = rng.standard_normal(n).astype(np.float32)
    f32 = np.float32
    scalars = dict(
        decay=f32(0.999),
        one_minus_b1=f32(0.1),
        b2=f32(0.999),
        one_minus_b2=f32(0.001),
        bc2_sqrt=f32(0.05),
        eps=f32(1e-8),
        step_size=f32(0.01),
    )
    a = [x.copy() for x in start]
    b = [x.copy() for x in start]
    adamw_kernel.adamw_update(a[0], g, a[1], a[2], **scalars)  # threaded chunks
    adamw_kernel._adamw_serial(b[0], g, b[1], b[2], *scalars.values())
    c = [x.copy() for x in start]
    optim.adamw_update(c[0], g, c[1], c[2], **scalars)
    for name, x, y, z in zip("pmv", a, b, c):
        assert np.array_equal(x, y), name
        assert_close(f"threaded vs reference {name}", x, z, atol=0, rtol=2e-7)
