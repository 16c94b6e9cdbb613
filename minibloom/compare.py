"""The `compare` command: is a port's number a bug, or rounding?

A porter (JAX, MLX, ggml, Rust, a GPU kernel) dumps their forward's activations for some token
ids to FILE (.npz or .safetensors; keys below) and runs

    python -m minibloom compare FILE --preset DIR [--precision fp32|bf16|fp16] [--json]

minibloom recomputes every key three ways on the same token ids and padding mask:

    truth      the forward in float64 (weights widened exactly, every op in float64)
    ours       the forward in float32 (minibloom's reference ops)
    emulated   the forward at the declared precision: weights rounded to bf16 / fp16, and every
               op's output rounded to it (LayerNorm, each linear, attention scores, softmax,
               attention context, residual adds, GeLU, logits), arithmetic inside an op in
               float32 (float32 accumulation); at fp32 the emulated run is `ours`

and, for each key present in FILE (in forward order), measures over the real (non-pad) positions

    max|port - truth|, relative = that / max|truth|
    envelope = SAFETY_FACTOR * max(max|emulated - truth|, UNIT[precision] * max|truth|)

The envelope is what an honest implementation at that precision gets wrong on these inputs (a
different summation order or fused kernel can be a few times worse than ours: SAFETY_FACTOR);
the UNIT floor (one rounding of the largest value) keeps exact ops such as the embedding lookup
from having a zero envelope. A key is "ok" when its difference is within the envelope. The first
key outside is the first divergence; the ops between the last good key before it and it are named,
so the porter knows where to look. Exit 0: all ok; 1: a divergence; 2: bad input (MinibloomError).

Keys: those of `dump` (parity.py's docstring), plus HF's `output_hidden_states` order as aliases:
`hidden_states.0` = word_embeddings_layernorm, `hidden_states.{i}` = h.{i-1}.output for
1 <= i < L, `hidden_states.{L}` = ln_f (HF applies ln_f to the last block's output). `meta` is
ignored. token_ids (B, T) is required; padding_mask (B, T) is optional (all ones).

Leaves out: gradients (the backward has its own live checks), KV-cache decode steps, generation.
"""

import json
import re
from pathlib import Path

import numpy as np

from minibloom import ops
from minibloom.errors import ArgumentError, CheckpointError

PRECISIONS = ("fp32", "bf16", "fp16")
# unit roundoff (half an ulp of 1) of each precision: the envelope's floor, relative to max|truth|
UNIT = {"fp32": 2.0**-24, "bf16": 2.0**-8, "fp16": 2.0**-11}
SAFETY_FACTOR = 8.0  # allowed on top of our own emulated error (docs/PORTING.md)
INPUT_KEYS = ("token_ids", "padding_mask")
IGNORED_KEYS = ("meta",)


# ------------------------------------------------------------------------------------------------
# rounding and the forward walk
# ------------------------------------------------------------------------------------------------


def rounding(precision):
    """x -> x rounded to `precision` and held in float32 (None for fp32: nothing to round)."""
    from minibloom.io.safetensors import bf16_to_f32, f32_to_bf16

    if precision == "fp32":
        return None
    if precision == "fp16":
        return lambda x: np.asarray(x, np.float32).astype(np.float16).astype(np.float32)
    return lambda x: bf16_to_f32(f32_to_bf16(np.asarray(x, np.float32)))


def _attention_rounded(q, k, v, alibi, visible, rnd):
    """ops.attention_forward's formula (no dropout) with a rounding after the scores, the softmax
    and the context: what a 16-bit attention does. Returns (ctx, probs)."""
    inv = np.float32(1.0 / np.sqrt(q.shape[-1]))
    scores = rnd(rnd(q @ k.swapaxes(-1, -2)) * inv + alibi[:, :, None, :])  # (B, H, T, S)
    scores = np.where(visible[:, None, :, :], scores, np.finfo(np.float32).min)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = rnd(e / e.sum(axis=-1, keepdims=True))  # softmax in float32, result rounded
    return rnd(probs @ v), probs


def forward_activations(params, config, token_ids, padding_mask, rnd=None) -> dict:
    """Every activation `dump` documents (parity.py), from the reference ops.

    params in float64 give the float64 truth; float32 params the float32 forward. With `rnd` (see
    `rounding`) the weights and each op's output are rounded to that precision (float32 params).
    """
    r = (lambda x: x) if rnd is None else rnd
    if rnd is not None:
        params = {k: rnd(v) for k, v in params.items()}
    eps, H = config.layer_norm_epsilon, config.n_head
    post_ln = config.apply_residual_connection_post_layernorm
    alibi = r(ops.alibi_bias(padding_mask, ops.alibi_slopes(H)))  # (B, H, S)
    visible = ops.attention_visibility(padding_mask, token_ids.shape[1])  # (B, T, S)

    def layernorm(x, name):
        return r(ops.layernorm_forward(x, params[f"{name}.weight"], params[f"{name}.bias"], eps)[0])

    def linear(x, name):
        return r(ops.linear_forward(x, params[f"{name}.weight"], params[f"{name}.bias"])[0])

    emb = ops.embedding_forward(token_ids, params["word_embeddings.weight"])[0]  # (B, T, C)
    x = layernorm(emb, "word_embeddings_layernorm")
    acts = {"alibi": alibi, "word_embeddings": emb, "word_embeddings_layernorm": x}
    for i in range(config.n_layer):
        p = f"h.{i}."
        ln1 = layernorm(x, p + "input_layernorm")
        q, k, v = ops.split_heads(linear(ln1, p + "self_attention.query_key_value"), H)
        if rnd is None:
            ctx, cache = ops.attention_forward(q, k, v, alibi, visible)
            probs = cache.probs
        else:
            ctx, probs = _attention_rounded(q, k, v, alibi, visible, rnd)
        merged = ops.merge_heads(ctx)  # (B, T, C)
        x1 = r(linear(merged, p + "self_attention.dense") + (ln1 if post_ln else x))
        ln2 = layernorm(x1, p + "post_attention_layernorm")
        h = linear(ln2, p + "mlp.dense_h_to_4h")  # (B, T, F)
        g = r(ops.gelu_forward(h)[0])
        x = r(linear(g, p + "mlp.dense_4h_to_h") + (ln2 if post_ln else x1))
        acts.update({
            p + "input_layernorm": ln1, p + "query": q, p + "key": k, p + "value": v,
            p + "attention_probs": probs, p + "attention_context": merged,
            p + "post_attention_layernorm": ln2, p + "mlp.dense_h_to_4h": h, p + "mlp.gelu": g,
            p + "output": x,
        })  # fmt: skip
    acts["ln_f"] = layernorm(x, "ln_f")
    acts["logits"] = r(ops.lm_head_forward(acts["ln_f"], params["word_embeddings.weight"]))
    return acts


# What each key adds to the one before it in forward order: the op(s) a divergence points at.
_BLOCK_OPS = {
    "input_layernorm": "input_layernorm (LayerNorm of the residual stream)",
    "query": "self_attention.query_key_value (fused linear) + head-interleaved split into q",
    "key": "the same fused QKV, split into k",
    "value": "the same fused QKV, split into v",
    "attention_probs": "scores q @ k^T / sqrt(D) + ALiBi, causal/padding mask, softmax",
    "attention_context": "probs @ v, heads merged",
    "post_attention_layernorm": "self_attention.dense + residual add + post_attention_layernorm",
    "mlp.dense_h_to_4h": "mlp.dense_h_to_4h (linear)",
    "mlp.gelu": "tanh GeLU (constant 0.79788456)",
    "output": "mlp.dense_4h_to_h + residual add",
}


def forward_order(n_layer) -> list[tuple[str, str]]:
    """[(key, op producing it)] for every activation key, in forward order."""
    keys = [
        ("alibi", "ALiBi bias: slope[h] * (position among real tokens)"),
        ("word_embeddings", "embedding lookup E[ids]"),
        ("word_embeddings_layernorm", "word_embeddings_layernorm (LayerNorm)"),
    ]
    for i in range(n_layer):
        keys += [(f"h.{i}.{name}", f"h.{i}: {op}") for name, op in _BLOCK_OPS.items()]
    return keys + [("ln_f", "ln_f (final LayerNorm)"), ("logits", "tied LM head ln_f @ E^T")]


def alias(key, n_layer):
    """The dump key of an HF `hidden_states.{i}` alias (other keys unchanged); None if out of range."""
    m = re.fullmatch(r"hidden_states\.(\d+)", key)
    if m is None:
        return key
    i = int(m.group(1))
    if i == 0:
        return "word_embeddings_layernorm"
    if i < n_layer:
        return f"h.{i - 1}.output"
    return "ln_f" if i == n_layer else None


# ------------------------------------------------------------------------------------------------
# reading the port's file
# ------------------------------------------------------------------------------------------------


def read_port_file(path: Path) -> dict:
    """{key: array} of an .npz or .safetensors file; a file that cannot be read is one ArgumentError."""
    if path.suffix == ".safetensors":
        from minibloom.io.safetensors import bf16_to_f32, read_safetensors

        try:
            tensors = read_safetensors(path)
        except CheckpointError as e:  # one line already; say how to store integer inputs
            hint = (
                "; store token_ids / padding_mask as F32 or use .npz" if "dtype" in str(e) else ""
            )
            raise ArgumentError(f"FILE {e}{hint}") from None
        return {
            k: bf16_to_f32(w) if dt == "BF16" else np.asarray(w) for k, (dt, w) in tensors.items()
        }
    if path.suffix != ".npz":
        raise ArgumentError(f"FILE {path}: expected a .npz or .safetensors file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ArgumentError(
            f"FILE {path}: not a readable .npz ({str(e).splitlines()[0]})"
        ) from None


def port_inputs(arrays: dict, vocab_size: int, path) -> tuple[np.ndarray, np.ndarray]:
    """token_ids (B, T) int64 and padding_mask (B, T) bool from the port's arrays, checked."""
    if "token_ids" not in arrays:
        raise ArgumentError(
            f"FILE {path}: no 'token_ids' (B, T); compare needs the inputs the port ran"
        )
    ids = np.asarray(arrays["token_ids"])
    if ids.ndim != 2 or ids.size == 0:
        raise ArgumentError(f"FILE {path}: token_ids: expected shape (B, T), found {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        if not (np.issubdtype(ids.dtype, np.floating) and np.all(ids == np.round(ids))):
            raise ArgumentError(
                f"FILE {path}: token_ids: expected integers, found dtype {ids.dtype}"
            )
    ids = ids.astype(np.int64)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ArgumentError(
            f"FILE {path}: token_ids: expected ids in [0, {vocab_size}), found {ids.max()}"
        )
    mask = np.asarray(arrays.get("padding_mask", np.ones(ids.shape, dtype=bool)))
    if mask.shape != ids.shape:
        raise ArgumentError(
            f"FILE {path}: padding_mask: expected shape {ids.shape}, found {mask.shape}"
        )
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ArgumentError(
            f"FILE {path}: padding_mask: expected 0/1 values, found dtype {mask.dtype}"
        )
    mask = mask.astype(bool)
    if not mask.any(axis=1).all():
        raise ArgumentError(f"FILE {path}: padding_mask: every row needs at least one real token")
    return ids, mask


def port_activations(arrays: dict, n_layer: int, path) -> dict:
    """The port's activations keyed by dump key (aliases resolved); unknown keys are refused."""
    known = {k for k, _ in forward_order(n_layer)}
    out, unknown = {}, []
    for key, value in arrays.items():
        if key in INPUT_KEYS or key in IGNORED_KEYS:
            continue
        name = alias(key, n_layer)
        if name not in known:
            unknown.append(key)
        elif name in out:
            raise ArgumentError(f"FILE {path}: {key!r} and another key are both {name!r}; keep one")
        else:
            out[name] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (
            f", ... ({len(unknown)} in all)" if len(unknown) > 8 else ""
        )
        raise ArgumentError(
            f"FILE {path}: unknown keys {shown}; expected the keys of `minibloom dump` or hidden_states.0..{n_layer}"
        )
    if not out:
        raise ArgumentError(
            f"FILE {path}: no activation keys to compare (only token_ids / padding_mask)"
        )
    return out


def _positions(key, shape, mask):
    """Boolean array of `shape` marking the real positions of `key`: pads are not compared."""
    if key == "alibi":  # (B, H, S): the key positions
        m = mask[:, None, :]
    elif key.endswith((".query", ".key", ".value", ".attention_probs")):  # (B, H, T, ...) by query
        m = mask[:, None, :, None]
    else:  # (B, T, ...)
        m = mask.reshape(mask.shape + (1,) * (len(shape) - 2))
    return np.broadcast_to(m, shape)


def _max_diff(a, truth, where):
    """(max |a - truth|, max |truth|) over `where`; inf if `a` has a NaN or inf there."""
    a, truth = np.asarray(a, np.float64)[where], truth[where]
    diff = np.abs(a - truth)
    return (float(diff.max()) if np.isfinite(diff).all() else float("inf")), float(
        np.abs(truth).max()
    )


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def compare_arrays(arrays: dict, lm64, precision="fp32", path="FILE") -> dict:
    """The report for the port's `arrays` against the float64 model `lm64` (a BloomCausalLM).

    Returns {"precision", "factor", "keys": [...], "first_divergence": {...} | None, "ok"}.
    """
    if precision not in PRECISIONS:
        raise ArgumentError(
            f"--precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}"
        )
    config, params64 = lm64.backbone.config, lm64.backbone.params
    ids, mask = port_inputs(arrays, config.vocab_size, path)
    port = port_activations(arrays, config.n_layer, path)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    truth = forward_activations(params64, config, ids, mask)
    ours = forward_activations(params32, config, ids, mask)
    emulated = (
        ours
        if precision == "fp32"
        else forward_activations(params32, config, ids, mask, rounding(precision))
    )
    for key, value in port.items():
        if np.shape(value) != truth[key].shape:
            raise ArgumentError(
                f"FILE {path}: {key}: expected shape {truth[key].shape} for token_ids {ids.shape}, "
                f"found {np.shape(value)}"
            )
        if not np.issubdtype(np.asarray(value).dtype, np.number):
            raise ArgumentError(
                f"FILE {path}: {key}: expected a numeric array, found dtype {value.dtype}"
            )
    rows, first, previous, pending = [], None, None, []
    for key, op in forward_order(config.n_layer):
        pending.append(op)
        if key not in port:
            if key == "alibi":  # an input of the scores, not a step of the residual stream
                pending = []
            continue
        where = _positions(key, truth[key].shape, mask)
        port_abs, scale = _max_diff(port[key], truth[key], where)
        ours_abs, _ = _max_diff(ours[key], truth[key], where)
        emulated_abs, _ = _max_diff(emulated[key], truth[key], where)
        envelope = SAFETY_FACTOR * max(emulated_abs, UNIT[precision] * scale)
        ratio = port_abs / envelope if envelope > 0 else (0.0 if port_abs == 0 else float("inf"))
        row = {
            "key": key, "max_abs": port_abs, "relative": port_abs / max(scale, 1e-300), "max_truth": scale,
            "ours_fp32": ours_abs, "emulated": emulated_abs, "envelope": envelope, "ratio": ratio,
            "ok": bool(ratio <= 1.0),
        }  # fmt: skip
        rows.append(row)
        if not row["ok"] and first is None:
            first = {"key": key, "ratio": ratio, "previous_good": previous, "ops": pending}
        if first is None:
            previous = key
        pending = []
    return {"precision": precision, "factor": SAFETY_FACTOR, "batch": list(ids.shape), "keys": rows,
            "first_divergence": first, "ok": first is None}  # fmt: skip


def _summarise(op_list):
    """The ops of a divergence, a whole block shortened to one entry (its sub-layer keys narrow it)."""
    out, i = [], 0
    while i < len(op_list):
        block = op_list[i].split(":", 1)[0]
        n = len(_BLOCK_OPS)
        if (
            op_list[i].startswith("h.")
            and [o.split(":", 1)[0] for o in op_list[i : i + n]] == [block] * n
        ):
            out.append(
                f"all of block {block} (dump its sub-layer keys, {block}.query ... {block}.mlp.gelu, to narrow it)"
            )
            i += n
        else:
            out.append(op_list[i])
            i += 1
    return out


def format_report(report: dict, model: str, path) -> list[str]:
    """The human-readable table of `compare_arrays`' report."""
    p = report["precision"]
    lines = [
        f"model: {model}   file: {path}   batch (B, T) = {tuple(report['batch'])}",
        f"precision: {p}   envelope = {report['factor']:g} x max(|emulated {p} - float64|, {UNIT[p]:.1e} x max|float64|)",
        f"{'key':<30} {'max|diff|':>10} {'relative':>10} {'ours fp32':>10} {'envelope':>10} {'x env':>8}  verdict",
    ]
    for r in report["keys"]:
        lines.append(
            f"{r['key']:<30} {r['max_abs']:10.3e} {r['relative']:10.3e} {r['ours_fp32']:10.3e} "
            f"{r['envelope']:10.3e} {r['ratio']:8.2f}  {'ok' if r['ok'] else 'OUTSIDE'}"
        )
    first = report["first_divergence"]
    if first is None:
        lines.append(f"PASS: all {len(report['keys'])} keys within their {p} envelope")
    else:
        since = first["previous_good"] or "the token ids"
        lines.append(f"first divergence: {first['key']}, {first['ratio']:.3g}x the {p} envelope")
        lines.append(f"look at the ops after {since}: " + "; then ".join(_summarise(first["ops"])))
        lines.append("FAIL")
    return lines


def run_compare(file, preset, precision="fp32", as_json=False, out=print) -> int:
    """`python -m minibloom compare`: print the table (or JSON); 0 if every key is within its envelope."""
    from minibloom.arguments import check_input_file
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.config import BloomConfig
    from minibloom.io import keras, presets
    from minibloom.memory import check_fits

    path = check_input_file("FILE", file)
    arrays = read_port_file(path)
    directory = presets.default_model_dir() if preset is None else presets.resolve(preset)
    if not keras.is_keras_preset(directory):  # (a keras config.json is another format)
        n = BloomConfig.from_json_file(directory / "config.json").num_parameters()
        # float64 weights, their float32 copy and the rounded copy of the emulated run: 16 bytes each
        check_fits(
            16 * n, f"compare on {n:,} parameters", "use a smaller checkpoint of the same port"
        )
    lm64 = BloomCausalLM.from_preset(directory, preprocessor=None, dtype="float64")
    report = compare_arrays(arrays, lm64, precision, path)
    if as_json:
        doc = {"model": str(directory), "file": str(path), **report}
        for row in report["keys"]:  # a NaN/inf in the port: strict JSON has no inf, say it in words
            row.update(
                {k: "inf" for k, v in row.items() if isinstance(v, float) and not np.isfinite(v)}
            )
        if report["first_divergence"] and not np.isfinite(report["first_divergence"]["ratio"]):
            report["first_divergence"]["ratio"] = "inf"
        out(json.dumps(doc, indent=1, allow_nan=False))
    else:
        for line in format_report(report, str(directory), path):
            out(line)
    return 0 if report["ok"] else 1
