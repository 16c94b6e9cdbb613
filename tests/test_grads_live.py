"""Live gradient parity: hypothesis draws small BLOOM configs and batches, and minibloom's loss and
every parameter gradient must equal torch autograd on transformers' BloomForCausalLM.

Runs when torch + transformers are installed (always in CI); the golden-file version of this
check is tests/test_model.py::test_golden_grads_match_torch.
"""

import numpy as np
import pytest
from conftest import assert_close, requires_transformers

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LOSS_RTOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 2e-6, 1e-4


@st.composite
def cases(draw):
    H = draw(st.integers(1, 6))
    D = draw(st.sampled_from([2, 4, 8]))
    cfg = dict(
        vocab_size=draw(st.integers(8, 64)),
        hidden_size=H * D,
        n_layer=draw(st.integers(1, 3)),
        n_head=H,
        apply_residual_connection_post_layernorm=draw(st.booleans()),
    )
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg["vocab_size"], size=(B, T))
    mask = rng.random((B, T)) > 0.25
    mask[:, -1] = True  # every row has a real last token
    lead = draw(st.integers(0, T - 1))
    mask[0, :lead] = False  # left padding on the first row
    y = rng.integers(0, cfg["vocab_size"], size=(B, T))
    w = (rng.uniform(0.0, 2.0, size=(B, T)) * mask).astype(np.float32)
    w[:, -1] = 1.0
    return cfg, ids, mask, y, w, seed


@requires_transformers
@settings(max_examples=8, deadline=None)
@given(cases())
def test_loss_and_grads_equal_torch_autograd(case):
    import torch
    from transformers import BloomConfig as HFConfig
    from transformers import BloomForCausalLM

    from minibloom.causal_lm import BloomCausalLM
    from minibloom.config import BloomConfig
    from minibloom.model import BloomBackbone

    cfg, ids, mask, y, w, seed = case
    torch.manual_seed(seed)
    hf = BloomForCausalLM(
        HFConfig(
            hidden_dropout=0.0,
            attention_dropout=0.0,
            initializer_range=0.3,
            attn_implementation="eager",
            **cfg,
        )
    )
    hf.train()
    params = {
        k.removeprefix("transformer."): v.detach().numpy().copy()
        for k, v in hf.state_dict().items()
        if k != "lm_head.weight"
    }
    lm = BloomCausalLM(
        BloomBackbone.from_config(BloomConfig.from_dict(hf.config.to_dict()), params)
    )

    logits = hf(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))
    ).logits
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, cfg["vocab_size"]), torch.tensor(y).reshape(-1), reduction="none"
    )
    wt = torch.tensor(w).reshape(-1)
    loss_ref = (wt * ce).sum() / wt.sum()
    loss_ref.backward()

    loss, grads = lm.loss_and_grads({"token_ids": ids, "padding_mask": mask}, y, w)
    assert loss == pytest.approx(loss_ref.item(), rel=LOSS_RTOL)
    for name, p in hf.named_parameters():
        if name == "lm_head.weight":
            continue
        assert_close(
            f"grad {name}",
            grads[name.removeprefix("transformer.")],
            p.grad.numpy(),
            GRAD_ATOL,
            GRAD_RTOL,
        )
