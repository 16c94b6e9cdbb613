"""Golden parity: tiny random BLOOMs saved by transformers load in minibloom and give HF's numbers.

The checkpoints and references in tests/golden/model/ are written by tools/golden_model.py
(`python tools/make_golden.py model`); these tests need neither torch nor transformers. Pad
positions are never compared (their values are meaningless in both implementations).
"""

import json

import numpy as np
import pytest
from conftest import GOLDEN, assert_close, golden_path

from minibloom.causal_lm import BloomCausalLM
from minibloom.io.checkpoint import read_checkpoint

# Tolerances per quantity (float32 compute on both sides; measured max diffs are ~3e-6).
LOGITS_ATOL, LOGITS_RTOL = 1e-5, 1e-5
HIDDEN_ATOL, HIDDEN_RTOL = 1e-5, 1e-5
# dtype="float16" rounds float32-stored weights to half precision: only a loose agreement.
HALF_ATOL = 3e-2

MODELS = ["h6_prefix", "post_ln_bare", "f16", "bf16", "sharded"]


def _load(name, dtype="float32"):
    directory = golden_path(f"model/{name}")
    ref = np.load(directory / "reference.npz")
    lm = BloomCausalLM.from_preset(directory, preprocessor=None, dtype=dtype)
    return lm, ref, json.loads((directory / "golden.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_logits_and_hidden_states_match_transformers(name):
    lm, ref, _ = _load(name)
    ids, mask = ref["token_ids"], ref["padding_mask"]
    out = lm.backbone.forward(ids, mask, output_hidden_states=True)
    logits = lm.backbone.logits(out.hidden)
    assert logits.dtype == np.float32
    assert len(out.hidden_states) == len(ref["hidden_states"])
    for i, (got, want) in enumerate(zip(out.hidden_states, ref["hidden_states"])):
        assert_close(
            f"{name} hidden_states[{i}]", got, want, HIDDEN_ATOL, HIDDEN_RTOL, where=mask[..., None]
        )
    assert_close(
        f"{name} logits", logits, ref["logits"], LOGITS_ATOL, LOGITS_RTOL, where=mask[..., None]
    )


@pytest.mark.parametrize("name", MODELS)
def test_stored_format_is_what_the_variant_claims(name):
    # Guards the golden set itself: each variant must really exercise its loader path.
    _, _, meta = _load(name)
    stored = read_checkpoint(GOLDEN / "model" / name)
    dtypes = {dtype for dtype, _ in stored.values()}
    assert dtypes == {
        {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[meta["stored_dtype"]]
    }
    prefixed = {k.startswith("transformer.") for k in stored}
    assert prefixed == {not meta["base_model_keys"]}
    shards = list((GOLDEN / "model" / name).glob("*.safetensors"))
    assert (len(shards) > 1) == (meta["max_shard_size"] is not None)


@pytest.mark.parametrize("name", ["f16", "h6_prefix"])
def test_half_precision_in_memory(name):
    lm, ref, _ = _load(name, dtype="float16")
    assert all(p.dtype == np.float16 for p in lm.params.values())
    mask = ref["padding_mask"]
    out = lm.backbone.forward(ref["token_ids"], mask)
    logits = lm.backbone.logits(out.hidden)
    assert logits.dtype == np.float32
    # F16-stored weights are used exactly as stored, so that case stays at float32 accuracy.
    atol = LOGITS_ATOL if name == "f16" else HALF_ATOL
    assert_close(
        f"{name} logits (float16 params)",
        logits,
        ref["logits"],
        atol,
        LOGITS_RTOL,
        where=mask[..., None],
    )


def test_predict_matches_when_available():
    lm, ref, _ = _load("h6_prefix")
    if not hasattr(lm, "predict"):
        pytest.skip("BloomCausalLM.predict not written yet")
    mask = ref["padding_mask"]
    logits = lm.predict({"token_ids": ref["token_ids"], "padding_mask": mask})
    assert_close(
        "predict logits", logits, ref["logits"], LOGITS_ATOL, LOGITS_RTOL, where=mask[..., None]
    )
