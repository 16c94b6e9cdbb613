"""Live parity with transformers (runs when torch + transformers are installed, as in CI).

hypothesis draws small BLOOM configs and masked batches; transformers builds and saves the model,
minibloom loads it and must give the same logits. The other direction too: what minibloom saves
with save_to_preset loads in transformers and gives the same logits. Also the `parity` and `dump`
commands end to end.
"""

import numpy as np
import pytest
from conftest import GOLDEN, assert_close, requires_transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibloom.causal_lm import BloomCausalLM
from minibloom.cli import main
from minibloom.config import BloomConfig
from minibloom.model import BloomBackbone

LOGITS_ATOL, LOGITS_RTOL = 2e-5, 1e-5


def _hf_logits(directory, ids, mask):
    import torch
    from transformers import BloomForCausalLM

    model = BloomForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            use_cache=False,
        )
    return out.logits.numpy()


@st.composite
def configs_and_batches(draw):
    H = draw(st.integers(1, 7))
    D = draw(st.sampled_from([2, 4, 8]))
    V = draw(st.integers(8, 64))
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    cfg = dict(
        vocab_size=V,
        hidden_size=H * D,
        n_layer=draw(st.integers(1, 3)),
        n_head=H,
        apply_residual_connection_post_layernorm=draw(st.booleans()),
        layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3])),
    )
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, T), dtype=np.int64)
    mask = rng.random((B, T)) < 0.75
    mask[:, -1] = True  # at least one real token per row (the last, as with left padding)
    storage = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    bare = draw(st.booleans())
    return cfg, seed, ids, mask, storage, bare


@requires_transformers
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=configs_and_batches())
def test_random_hf_models_load_and_match(tmp_path_factory, case):
    import torch
    from transformers import BloomConfig as HFConfig
    from transformers import BloomForCausalLM

    cfg, seed, ids, mask, storage, bare = case
    torch.manual_seed(seed)
    model = BloomForCausalLM(HFConfig(**cfg, attn_implementation="eager")).eval()
    with torch.no_grad():  # healthy scales: HF's init (0.02, zero biases) hides mistakes
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    directory = tmp_path_factory.mktemp("hf")
    (model.transformer if bare else model).to(getattr(torch, storage)).save_pretrained(directory)
    ref = _hf_logits(directory, ids, mask)

    lm = BloomCausalLM.from_preset(directory, preprocessor=None)
    logits = lm.backbone.logits(lm.backbone(dict(token_ids=ids, padding_mask=mask)))
    assert_close(
        f"logits {cfg} {storage}", logits, ref, LOGITS_ATOL, LOGITS_RTOL, where=mask[..., None]
    )


@requires_transformers
@pytest.mark.parametrize("dtype, shard", [("float32", None), ("float16", None), ("bfloat16", 4000)])
def test_transformers_loads_what_we_save(tmp_path, dtype, shard):
    config = BloomConfig(vocab_size=50, hidden_size=24, n_layer=2, n_head=6)
    rng = np.random.default_rng(3)
    params = {
        k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in BloomBackbone.from_config(config).params.items()
    }
    lm = BloomCausalLM(BloomBackbone.from_config(config, params))
    lm.save_to_preset(tmp_path / "m", dtype=dtype, max_shard_bytes=shard)

    ids = rng.integers(0, 50, size=(2, 6))
    mask = np.ones((2, 6), dtype=bool)
    mask[1, :2] = False
    ref = _hf_logits(tmp_path / "m", ids, mask)
    # compare against minibloom running on what was stored (half precision rounds the weights)
    ours = BloomCausalLM.from_preset(tmp_path / "m", preprocessor=None)
    logits = ours.backbone.logits(ours.backbone(dict(token_ids=ids, padding_mask=mask)))
    assert_close(
        f"saved {dtype} logits", logits, ref, LOGITS_ATOL, LOGITS_RTOL, where=mask[..., None]
    )
    if dtype == "float32":  # and lossless in float32: the original model gives the same numbers
        original = lm.backbone.logits(lm.backbone(dict(token_ids=ids, padding_mask=mask)))
        assert_close(
            "original logits", original, ref, LOGITS_ATOL, LOGITS_RTOL, where=mask[..., None]
        )


@requires_transformers
def test_parity_command_passes_and_fails(tmp_path, capsys):
    directory = GOLDEN / "model" / "h6_prefix"
    assert main(["parity", str(directory), "--ids", "5,6,7,8,9"]) == 0
    out = capsys.readouterr().out
    assert "block 0 output" in out and "logits" in out and "PASS" in out
    # an impossible tolerance must fail with status 1 and say which layers are above it
    assert main(["parity", str(directory), "--ids", "5,6,7,8,9", "--tolerance", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_dump_writes_every_activation(tmp_path):
    directory = GOLDEN / "model" / "post_ln_bare"
    ref = np.load(directory / "reference.npz")
    ids = ref["token_ids"][0]  # the full row of the golden batch
    out = tmp_path / "acts.npz"
    assert (
        main(
            [
                "dump",
                str(directory),
                "--prompt",
                "unused",
                "--ids",
                ",".join(map(str, ids)),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    acts = np.load(out)
    L, T = 2, len(ids)
    for i in range(L):
        for key in (
            "input_layernorm",
            "query",
            "key",
            "value",
            "attention_probs",
            "attention_context",
            "mlp.gelu",
            "output",
        ):
            assert f"h.{i}.{key}" in acts
        np.testing.assert_allclose(acts[f"h.{i}.attention_probs"].sum(-1), 1.0, atol=1e-5)
    assert acts["h.0.attention_probs"].shape == (1, 4, T, T)
    assert_close("dump h.0.output", acts["h.0.output"][0], ref["hidden_states"][1][0], 1e-5, 1e-5)
    assert_close("dump ln_f", acts["ln_f"][0], ref["hidden_states"][-1][0], 1e-5, 1e-5)
    assert_close("dump logits", acts["logits"][0], ref["logits"][0], 1e-5, 1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
