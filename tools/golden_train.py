"""Golden part "train": 10 torch.optim.AdamW steps on a tiny BloomForCausalLM, step by step.

Writes tests/golden/train/:

    model/            the starting weights: transformers `save_pretrained` (config.json + safetensors)
    reference.npz     token_ids, padding_mask, y, sample_weight   (STEPS, B, T) the batches, in order
                      losses, grad_norms, learning_rates           (STEPS,) per step, before the update
                      param:<name>                                 final parameters after STEPS updates
    meta.json         hyper-parameters and library versions

The step is the one minibloom's Trainer makes: weighted mean cross-entropy
sum(w * ce) / sum(w) over the (already shifted) targets, backward, clip_grad_norm_(1.0), AdamW with
weight decay 0.1 on every tensor except biases and LayerNorm weights (a second parameter group),
and a linear-warmup + cosine schedule (LambdaLR, stepped after each update). Batches are
right-padded like BloomCausalLMPreprocessor's output, with fractional weights on some targets.

`run_torch(model_dir, batches)` is also called by tests/test_train.py for the live parity check.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np

STEPS, B, T, VOCAB = 10, 4, 8, 300
HP = dict(
    learning_rate=1e-2,
    warmup_steps=2,
    total_steps=STEPS,
    weight_decay=0.1,
    clip=1.0,
    betas=(0.9, 0.999),
    eps=1e-8,
    no_decay=("bias", "layernorm", "ln_f"),
)


def make_batches(seed=0):
    """STEPS right-padded batches: dict of (STEPS, B, T) arrays token_ids, padding_mask, y, sample_weight."""
    rng = np.random.default_rng(seed)
    ids = np.full((STEPS, B, T + 1), 3, dtype=np.int64)  # pad id 3
    mask = np.zeros((STEPS, B, T + 1), dtype=bool)
    for s in range(STEPS):
        for b in range(B):
            n = int(rng.integers(3, T + 2))  # real tokens in this row (the last one is </s> = 2)
            ids[s, b, :n] = np.append(rng.integers(4, VOCAB, size=n - 1), 2)
            mask[s, b, :n] = True
    w = mask[:, :, 1:].astype(np.float32)
    w[:, 0, :2] *= 0.5  # fractional sample weights on the first row's first targets
    return {
        "token_ids": ids[:, :, :-1],
        "padding_mask": mask[:, :, :-1],
        "y": ids[:, :, 1:],
        "sample_weight": w,
    }


def lr_at(step):
    """Linear warmup + cosine decay multiplier (transformers' get_cosine_schedule_with_warmup)."""
    w, total = HP["warmup_steps"], HP["total_steps"]
    if step < w:
        return step / max(1, w)
    progress = (step - w) / max(1, total - w)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def run_torch(model_dir, batches):
    """Train from `model_dir` on `batches`; returns (losses, grad_norms, lrs, final params by HF name)."""
    import torch
    from transformers import BloomForCausalLM

    torch.set_num_threads(1)
    model = BloomForCausalLM.from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch.float32
    )
    model.train()  # dropout rates are 0 in the saved config
    named = dict(
        model.transformer.named_parameters()
    )  # the tied head shares word_embeddings.weight
    no_decay = [p for k, p in named.items() if any(s in k for s in HP["no_decay"])]
    decay = [p for k, p in named.items() if not any(s in k for s in HP["no_decay"])]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": HP["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=HP["learning_rate"],
        betas=HP["betas"],
        eps=HP["eps"],
        foreach=False,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses, norms, lrs = [], [], []
    for s in range(len(batches["y"])):
        ids = torch.tensor(batches["token_ids"][s])
        mask = torch.tensor(batches["padding_mask"][s]).long()
        y = torch.tensor(batches["y"][s])
        w = torch.tensor(batches["sample_weight"][s])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
        )
        loss = (w.reshape(-1) * ce).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(named.values()), HP["clip"])))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    params = {k: p.detach().numpy().copy() for k, p in named.items()}
    return np.array(losses), np.array(norms), np.array(lrs), params


def make(out_dir: Path) -> None:
    import torch
    import transformers
    from transformers import BloomConfig, BloomForCausalLM

    root = out_dir / "train"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    torch.manual_seed(0)
    config = BloomConfig(
        vocab_size=VOCAB, hidden_size=48, n_layer=2, n_head=6, attn_implementation="eager"
    )
    BloomForCausalLM(config).save_pretrained(root / "model", safe_serialization=True)
    batches = make_batches()
    losses, norms, lrs, params = run_torch(root / "model", batches)
    np.savez_compressed(
        root / "reference.npz",
        **batches,
        losses=losses,
        grad_norms=norms,
        learning_rates=lrs,
        **{f"param:{k}": v for k, v in params.items()},
    )
    meta = {
        "steps": STEPS,
        "batch": [B, T],
        "vocab": VOCAB,
        **{k: v for k, v in HP.items()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"train: losses {np.round(losses, 4).tolist()}")


if __name__ == "__main__":
    make(Path(__file__).resolve().parent.parent / "tests" / "golden")
