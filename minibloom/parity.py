"""The `parity` and `dump` commands: checking minibloom against transformers on a real checkpoint.

`parity` runs minibloom and HF transformers' BloomForCausalLM (float32, eager attention) on the
same token ids and prints, for every layer, the largest absolute difference and that difference
relative to the largest reference value. The batch holds the prompt twice: as is, and left-padded
by three pad tokens, so ALiBi's padding semantics are checked too; pad positions are not compared.
The exit status is 1 when any relative difference is above the tolerance.

`dump` writes every intermediate activation of minibloom's forward pass to an .npz, for people
porting BLOOM elsewhere who want to find the first op where their numbers leave ours. Keys:

    token_ids, padding_mask           (B, T)            the inputs (B = 1)
    alibi                             (B, H, S)          ALiBi bias per key position
    word_embeddings                   (B, T, C)          E[ids]
    word_embeddings_layernorm         (B, T, C)          = hidden state 0
    h.{i}.input_layernorm             (B, T, C)
    h.{i}.query / .key / .value       (B, H, T, D)       split from the head-interleaved fused QKV
    h.{i}.attention_probs             (B, H, T, S)       softmax(QK^T/sqrt(D) + alibi), masked
    h.{i}.attention_context           (B, T, C)          probs @ V, heads merged (input of dense)
    h.{i}.post_attention_layernorm    (B, T, C)
    h.{i}.mlp.dense_h_to_4h           (B, T, F)          before GeLU
    h.{i}.mlp.gelu                    (B, T, F)
    h.{i}.output                      (B, T, C)          the block's output (residual stream)
    ln_f                              (B, T, C)          final hidden states
    logits                            (B, T, V)
    meta                              JSON string: model directory, prompt, config

transformers and torch are imported inside `transformers_hidden_states` only, never at import
time: the rest of minibloom must not need them. Leaves out: comparing sub-layer activations with
transformers (it exposes only hidden states), half-precision reference runs, generation.
"""

import json
import os
from pathlib import Path

import numpy as np

from minibloom.errors import ArgumentError

PAD_SHIFT = 3  # left-padding of the second parity row


def load_model(preset):
    """(directory, BloomCausalLM) for a preset name or model directory, float32 in memory."""
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.io import presets

    directory = presets.default_model_dir() if preset is None else presets.resolve(preset)
    return directory, BloomCausalLM.from_preset(directory, preprocessor=None)


def prompt_ids(
    directory: Path, prompt: str | None, ids, vocab_size: int | None = None
) -> np.ndarray:
    """Token ids (T,) int64: `ids` (a list, or a string "1,2,3") if given, else `prompt` encoded with
    tokenizer.json. With `vocab_size`, every id must be in [0, vocab_size)."""
    if ids is not None:
        if isinstance(ids, str):
            try:
                ids = [int(t) for t in ids.replace(",", " ").split()]
            except ValueError:
                raise ArgumentError(
                    f"--ids: expected integers separated by commas or spaces, found {ids[:60]!r}"
                ) from None
        out = np.array([int(i) for i in ids], dtype=np.int64)
        bad = [int(i) for i in out if i < 0 or (vocab_size is not None and i >= vocab_size)]
        if bad:
            raise ArgumentError(
                f"--ids: expected ids in [0, {vocab_size if vocab_size is not None else 'V'}) (the model's "
                f"vocabulary), found {bad[0]}"
            )
    else:
        if not (directory / "tokenizer.json").is_file():
            raise ArgumentError(
                f"{directory} has no tokenizer.json to encode --prompt; pass token ids with --ids"
            )
        from minibloom.tokenizer import BloomTokenizer

        out = np.array(
            BloomTokenizer.from_file(directory / "tokenizer.json").encode(prompt), dtype=np.int64
        )
    if out.size == 0:
        raise ArgumentError("the prompt encodes to no tokens; give a non-empty --prompt or --ids")
    return out


def parity_batch(ids: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompt as row 0, and left-padded by PAD_SHIFT as row 1: (B=2, T + PAD_SHIFT) ids and mask."""
    T = ids.shape[0]
    token_ids = np.full((2, T + PAD_SHIFT), pad_id, dtype=np.int64)
    mask = np.zeros((2, T + PAD_SHIFT), dtype=bool)
    token_ids[0, :T], mask[0, :T] = (
        ids,
        True,
    )  # row 0: right-padded, which changes nothing for row 0
    token_ids[1, PAD_SHIFT:], mask[1, PAD_SHIFT:] = ids, True
    return token_ids, mask


# ------------------------------------------------------------------------------------------------
# activations
# ------------------------------------------------------------------------------------------------


def minibloom_activations(lm, token_ids, padding_mask) -> dict[str, np.ndarray]:
    """Every intermediate activation of minibloom's forward (see the module docstring for keys),
    in the model's dtype: the walk is compare.forward_activations, the one that `compare` checks
    a port with."""
    from minibloom.compare import forward_activations

    acts = {"token_ids": token_ids, "padding_mask": padding_mask}
    acts.update(
        forward_activations(lm.backbone.params, lm.backbone.config, token_ids, padding_mask)
    )
    return acts


def transformers_hidden_states(directory, token_ids, padding_mask) -> tuple[list, np.ndarray]:
    """HF transformers' hidden states (L + 1 arrays) and logits, float32, eager attention."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import BloomForCausalLM
    except ImportError:
        raise ArgumentError(
            "parity needs torch and transformers: pip install -e '.[ref]'"
        ) from None
    model = BloomForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(token_ids),
            attention_mask=torch.from_numpy(padding_mask.astype(np.int64)),
            output_hidden_states=True,
            use_cache=False,
        )
    return [h.numpy() for h in out.hidden_states], out.logits.numpy()


def compare(ours, theirs, mask) -> tuple[float, float, float]:
    """(max |ours - theirs|, max |theirs|, their ratio) over the real (non-pad) positions."""
    ours, theirs = np.asarray(ours, np.float64)[mask], np.asarray(theirs, np.float64)[mask]
    max_abs = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    return max_abs, scale, max_abs / max(scale, 1e-30)


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------


def _float64_outputs(lm, token_ids, mask) -> list[np.ndarray]:
    """The float64 truth of parity's table: hidden states + logits of lm's weights widened to float64."""
    from minibloom.model import BloomBackbone

    params = {k: v.astype(np.float64) for k, v in lm.backbone.params.items()}
    backbone = BloomBackbone.from_config(lm.backbone.config, params)
    fwd = backbone.forward(token_ids, mask, output_hidden_states=True)
    return fwd.hidden_states + [backbone.logits(fwd.hidden)]


def run_parity(preset, prompt, ids=None, tolerance=1e-4, truth=False, out=print) -> int:
    """Print the per-layer comparison table; returns 0 if every relative difference <= tolerance.

    truth=True adds two columns: transformers' and minibloom's relative differences to the float64
    forward (minibloom's ops in float64; equal to a float64 transformers run to ~1e-12, tested), so
    the table shows which of the two is nearer the truth.
    """
    directory, lm = load_model(preset)
    cfg = lm.backbone.config
    token_ids, mask = parity_batch(
        prompt_ids(directory, prompt, ids, cfg.vocab_size), cfg.pad_token_id or 0
    )
    fwd = lm.backbone.forward(token_ids, mask, output_hidden_states=True)
    ours = fwd.hidden_states + [lm.backbone.logits(fwd.hidden)]
    theirs_hidden, theirs_logits = transformers_hidden_states(directory, token_ids, mask)
    theirs = theirs_hidden + [theirs_logits]
    exact = _float64_outputs(lm, token_ids, mask) if truth else [None] * len(ours)
    names = ["embeddings (LN_emb)"] + [f"block {i} output" for i in range(cfg.n_layer - 1)]
    names += ["final hidden (ln_f)", "logits"]

    out(
        f"model: {directory}  (L={cfg.n_layer}, C={cfg.hidden_size}, H={cfg.n_head}, V={cfg.vocab_size})"
    )
    out(
        f"batch: {token_ids.shape[1] - PAD_SHIFT} tokens, as is and left-padded by {PAD_SHIFT}; pads not compared"
    )
    extra = f" {'hf-vs-f64':>11} {'ours-vs-f64':>11} nearer" if truth else ""
    out(f"{'quantity':<24} {'max|diff|':>11} {'max|ref|':>11} {'relative':>11}{extra}")
    worst = 0.0
    for name, a, b, t in zip(names, ours, theirs, exact):
        max_abs, scale, rel = compare(a, b, mask)
        worst = max(worst, rel)
        flag = "" if rel <= tolerance else "  <-- above tolerance"
        if truth:
            rel_hf, rel_ours = compare(b, t, mask)[2], compare(a, t, mask)[2]
            nearer = "same" if rel_hf == rel_ours else ("hf" if rel_hf < rel_ours else "ours")
            flag = f" {rel_hf:11.3e} {rel_ours:11.3e} {nearer:>6}" + flag
        out(f"{name:<24} {max_abs:11.3e} {scale:11.3e} {rel:11.3e}{flag}")
    same_argmax = bool((ours[-1].argmax(-1) == theirs[-1].argmax(-1))[mask].all())
    out(f"greedy next tokens identical at every position: {same_argmax}")
    ok = worst <= tolerance
    out(
        f"{'PASS' if ok else 'FAIL'}: largest relative difference {worst:.3e} (tolerance {tolerance:g})"
    )
    return 0 if ok else 1


def run_dump(preset, prompt, out_path, ids=None) -> Path:
    """Write every intermediate activation for the prompt (batch of one) to `out_path` (.npz),
    atomically (checkpoint.py's writer); the output path is checked before the model is loaded."""
    from minibloom.arguments import check_output_dir, expand_path
    from minibloom.io.files import atomic_write

    out_path = expand_path("--out", out_path)
    if out_path.suffix != ".npz" or out_path.is_dir():
        raise ArgumentError(f"--out: expected a .npz file name, found {str(out_path)!r}")
    check_output_dir("--out", out_path.parent)
    directory, lm = load_model(preset)
    tokens = prompt_ids(directory, prompt, ids, lm.backbone.config.vocab_size)[None, :]  # (1, T)
    acts = minibloom_activations(lm, tokens, np.ones(tokens.shape, dtype=bool))
    meta = {"model": str(directory), "prompt": prompt, "config": lm.backbone.config.to_dict()}
    acts["meta"] = np.array(json.dumps(meta))
    atomic_write(out_path, lambda f: np.savez(f, **acts))
    return out_path
