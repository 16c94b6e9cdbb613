"""Golden part "model": tiny random BLOOMs saved by transformers, with their logits and hidden states.

Each model is a real `save_pretrained` output (config.json + safetensors) in
tests/golden/model/<name>/, next to `reference.npz` holding:

    token_ids      (B, T) int64    a batch with a full row, left padding, right padding and holes
    padding_mask   (B, T) bool
    logits         (B, T, V) float32    BloomForCausalLM output (eager attention, float32)
    hidden_states  (L+1, B, T, C) float32  output_hidden_states: embedding LN output, each block's
                                           output, and the last entry after ln_f

The variants cover what a loader and a forward pass can get wrong:

    h6_prefix     H=6 (non-power-of-two ALiBi slopes), BloomForCausalLM keys (`transformer.` prefix)
    post_ln_bare  apply_residual_connection_post_layernorm=True, BloomModel keys (no prefix)
    f16           weights stored as F16;  reference computed in float32 from the stored weights
    bf16          weights stored as BF16; reference computed in float32 from the stored weights
    sharded       3 blocks split over several files + model.safetensors.index.json

Every parameter is redrawn at a healthy scale (HF's init is 0.02 with zero biases and unit
LayerNorms, which would hide mistakes in biases and LayerNorm affine terms). Sizes are tiny
(V=300, C=48) so the whole folder stays well under 2 MB.
"""

import json
import shutil
from pathlib import Path

import numpy as np

VOCAB = 300
MODELS = {
    # name: (config overrides, stored dtype, save the base model (no prefix)?, max_shard_size)
    "h6_prefix": (dict(hidden_size=48, n_layer=2, n_head=6), "float32", False, None),
    "post_ln_bare": (
        dict(hidden_size=48, n_layer=2, n_head=4, apply_residual_connection_post_layernorm=True),
        "float32",
        True,
        None,
    ),
    "f16": (dict(hidden_size=48, n_layer=2, n_head=6), "float16", False, None),
    "bf16": (dict(hidden_size=48, n_layer=2, n_head=3), "bfloat16", True, None),
    "sharded": (dict(hidden_size=48, n_layer=3, n_head=6), "float32", False, "60KB"),
}


def make_inputs(rng: np.random.Generator, B: int = 4, T: int = 9):
    """A batch exercising every mask shape: full, left-padded, right-padded, holes in the middle."""
    ids = rng.integers(4, VOCAB, size=(B, T), dtype=np.int64)
    mask = np.ones((B, T), dtype=bool)
    mask[1, :3] = False  # left padding
    mask[2, -2:] = False  # right padding
    mask[3, [0, 3, 4, 7]] = False  # holes
    ids[~mask] = 3  # pad id
    return ids, mask


def _randomize(model, torch, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.startswith(("ln_f", "transformer.ln_f")):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def make(out_dir: Path) -> None:
    import torch
    import transformers
    from transformers import BloomConfig, BloomForCausalLM

    root = out_dir / "model"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    for k, (name, (overrides, dtype, bare, shard)) in enumerate(MODELS.items()):
        torch.manual_seed(k)
        config = BloomConfig(vocab_size=VOCAB, **overrides, attn_implementation="eager")
        model = BloomForCausalLM(config).eval()
        _randomize(model, torch, seed=100 + k)
        to_save = model.transformer if bare else model
        to_save = to_save.to(getattr(torch, dtype))
        d = root / name
        kwargs = {"max_shard_size": shard} if shard else {}
        to_save.save_pretrained(d, safe_serialization=True, **kwargs)

        # The reference reloads what was saved, so half-precision variants are compared on the
        # exact stored weights widened to float32.
        ref = BloomForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        ids, mask = make_inputs(np.random.default_rng(k))
        with torch.no_grad():
            out = ref(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                output_hidden_states=True,
                use_cache=False,
            )
        np.savez_compressed(
            d / "reference.npz",
            token_ids=ids,
            padding_mask=mask,
            logits=out.logits.float().numpy(),
            hidden_states=np.stack([h.float().numpy() for h in out.hidden_states]),
        )
        (d / "golden.json").write_text(
            json.dumps(
                {
                    "stored_dtype": dtype,
                    "base_model_keys": bare,
                    "max_shard_size": shard,
                    "versions": versions,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"  model/{name}: {sorted(p.name for p in d.iterdir())}")
