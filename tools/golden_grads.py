"""Golden part "grads": the loss and every parameter gradient from torch autograd on tiny BLOOMs.

Each model is a real `save_pretrained` output (config.json + model.safetensors, `transformer.`
prefix, tied head omitted) in tests/golden/grads/<name>/, next to `reference.npz` holding, for
each batch `<batch>` in BATCHES:

    <batch>.token_ids      (B, T) int64
    <batch>.padding_mask   (B, T) bool
    <batch>.y              (B, T) int64    targets already shifted (y[b, t] follows position t), -100 = ignore
    <batch>.sample_weight  (B, T) float32
    <batch>.loss           ()     float64  torch's loss
    <batch>.grad.<name>    the gradient of every parameter (HF names without `transformer.`)

and `meta` (JSON: versions, seed, config). The batches:

    hf_labels   left padding + a hole; loss from HF itself (`labels=` with -100 on pads, shifted
                inside), i.e. minibloom's reduction="mean" with weights 1 on counted targets
    weighted    left padding + holes + random sample weights; the loss is computed by hand in
                torch from the logits as sum(w * ce) / sum(w) (HF has no sample weights)

Models: `pre_ln` and `post_ln` (both residual modes), H=6 (non-power-of-two ALiBi slopes), dropout
0, float32. Every parameter is redrawn at a healthy scale so biases and LayerNorm affine terms
matter. Sizes are tiny (V=128, C=36) to keep the folder under 1 MB.
"""

import json
import shutil
from pathlib import Path

import numpy as np

SEED = 1234
VOCAB = 128
MODELS = {
    "pre_ln": dict(
        hidden_size=36, n_layer=2, n_head=6, apply_residual_connection_post_layernorm=False
    ),
    "post_ln": dict(
        hidden_size=36, n_layer=2, n_head=6, apply_residual_connection_post_layernorm=True
    ),
}


def _randomize(model, torch, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "ln_f" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def make_batches(rng):
    """The two batches described in the module docstring, as dicts of numpy arrays."""
    B, T = 3, 8
    ids = rng.integers(4, VOCAB, size=(B, T), dtype=np.int64)
    mask = np.ones((B, T), dtype=bool)
    mask[1, :3] = False  # left padding
    mask[2, 4] = False  # a hole
    ids[~mask] = 3  # pad id
    labels = np.where(mask, ids, -100)
    # HF shifts labels inside; our y is already shifted, the last position has no target
    y = np.concatenate([labels[:, 1:], np.full((B, 1), -100)], axis=1)
    hf_labels = dict(
        token_ids=ids,
        padding_mask=mask,
        y=y,
        sample_weight=np.ones((B, T), np.float32),
        labels=labels,
    )

    ids2 = rng.integers(4, VOCAB, size=(B, T), dtype=np.int64)
    mask2 = np.ones((B, T), dtype=bool)
    mask2[0, :2] = False  # left padding
    mask2[2, [2, 5]] = False  # holes
    ids2[~mask2] = 3
    y2 = np.concatenate([ids2[:, 1:], rng.integers(4, VOCAB, size=(B, 1))], axis=1)
    w2 = (rng.uniform(0.0, 2.0, size=(B, T)) * mask2).astype(np.float32)
    weighted = dict(token_ids=ids2, padding_mask=mask2, y=y2, sample_weight=w2)
    return {"hf_labels": hf_labels, "weighted": weighted}


def make(out_dir: Path) -> None:
    import torch
    import transformers
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(SEED)
    root = Path(out_dir) / "grads"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i, (name, overrides) in enumerate(MODELS.items()):
        config = BloomConfig(
            vocab_size=VOCAB,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            attn_implementation="eager",
            **overrides,
        )
        model = BloomForCausalLM(config)
        _randomize(model, torch, SEED + i)
        model.save_pretrained(root / name)
        model.train()  # dropout is 0; train mode selects HF's custom GeLU backward (bloom_gelu_back)
        out = {}
        for bname, b in make_batches(np.random.default_rng(SEED + i)).items():
            model.zero_grad()
            ids, mask = (
                torch.tensor(b["token_ids"]),
                torch.tensor(b["padding_mask"].astype(np.int64)),
            )
            if "labels" in b:
                loss = model(
                    input_ids=ids, attention_mask=mask, labels=torch.tensor(b["labels"])
                ).loss
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
                ce = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, VOCAB), torch.tensor(b["y"]).reshape(-1), reduction="none"
                )
                w = torch.tensor(b["sample_weight"]).reshape(-1)
                loss = (w * ce).sum() / w.sum()
            loss.backward()
            for key in ("token_ids", "padding_mask", "y", "sample_weight"):
                out[f"{bname}.{key}"] = b[key]
            out[f"{bname}.loss"] = np.float64(loss.item())
            for pname, p in model.named_parameters():
                if pname == "lm_head.weight":  # tied: same tensor as the embedding, listed once
                    continue
                out[f"{bname}.grad.{pname.removeprefix('transformer.')}"] = (
                    p.grad.detach().numpy().astype(np.float32)
                )
        meta = dict(
            seed=SEED,
            config=config.to_dict(),
            torch=torch.__version__,
            transformers=transformers.__version__,
            numpy=np.__version__,
        )
        out["meta"] = np.array(json.dumps(meta, default=str))
        tmp = root / name / "reference.tmp.npz"
        np.savez_compressed(tmp, **out)
        tmp.replace(root / name / "reference.npz")
        print(
            f"  grads/{name}: "
            + ", ".join(f"{k}={out[f'{k}.loss']:.6f}" for k in ("hf_labels", "weighted"))
        )
