"""BloomBackbone: the BLOOM transformer (embedding -> L blocks -> final LayerNorm), forward and backward.

    x = LN_emb(E[ids])                                    (B, T, C)   no position embedding
    for each block:                                       ALiBi biases the attention instead
        ln1 = LN1(x);        res1 = ln1 if post_ln else x
        x1  = dropout(dense(attention(qkv(ln1)))) + res1
        ln2 = LN2(x1);       res2 = ln2 if post_ln else x1
        x   = dropout(fc2(gelu(fc1(ln2)))) + res2
    hidden = LN_f(x)                                      (B, T, C)
    logits = hidden @ E.T                                 (B, T, V)   tied head, no bias

(post_ln is `apply_residual_connection_post_layernorm`, False in every released model.)
`block_backward` undoes `block_forward` op by op in reverse order, using the caches that
`forward(..., training=True)` keeps; `backward` then walks the blocks in reverse and returns a
gradient dict keyed like `params`. The only places where gradients add up are the residual
stream and the tied embedding (lookup + head); each gets an explicit `+` with a comment.

Shape legend: B batch, T tokens in this call, S key length (cached + T), C hidden, H heads,
D = C / H, F MLP width, V vocabulary rows, L blocks.

Parameters live in a flat dict keyed by HF names without `transformer.` (docs/ARCHITECTURE.md).
They may be float16, or bfloat16 held as uint16 bit patterns (ops.widen), when a user keeps a
half-precision checkpoint in memory (`dtype="auto"` or "float16"): each op widens the weights it uses to float32, one layer at a time, so the compute and
the result are the same as converting everything up front.

Every op is called as `ops.<name>`: the math is in minibloom/ops.py; minibloom/dispatch.py may
hand out a faster twin of the same signature instead (minibloom/kernels/ops.py: numba attention,
16-bit matrix-vector products for decode steps), equal to float32 rounding.

Leaves out: reading checkpoints (checkpoint.py), the loss (losses.py), the task API (causal_lm.py),
generation loops (generate.py) and HF's `pretraining_tp`/`slow_but_exact` replay.
"""

from typing import NamedTuple

import numpy as np

from minibloom import ops as reference_ops
from minibloom.config import BLOCK_KEYS, BloomConfig, param_shapes
from minibloom.dispatch import ops
from minibloom.errors import ArgumentError
from minibloom.kvcache import KVCache
from minibloom.memory import check_fits


def init_params(config, seed=0):
    """Random parameters initialised as HF does: N(0, initializer_range) for Linear and Embedding
    weights, zero biases, LayerNorm weight 1 and bias 0. float32, seeded."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("layernorm.weight") or name == "ln_f.weight":
            params[name] = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype=np.float32)
        else:
            w = rng.standard_normal(shape, dtype=np.float32)
            w *= np.float32(config.initializer_range)
            params[name] = w
    return params


def check_params(params, config):
    """Raise ArgumentError unless `params` has exactly the keys and shapes of `config` and float dtypes."""
    if not isinstance(params, dict):
        raise ArgumentError(f"params: expected a dict of arrays, found {type(params).__name__}")
    expected = param_shapes(config)
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    if missing or unexpected:
        raise ArgumentError(
            f"params: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
        )
    for k, shape in expected.items():
        a = params[k]
        if not isinstance(a, np.ndarray) or a.shape != shape:
            found = a.shape if isinstance(a, np.ndarray) else type(a).__name__
            raise ArgumentError(f"params[{k!r}]: expected shape {shape}, found {found}")
        if not (np.issubdtype(a.dtype, np.floating) or a.dtype == np.uint16):  # uint16: bf16 words
            raise ArgumentError(
                f"params[{k!r}]: expected a float array (or uint16 bfloat16 words), found dtype {a.dtype}"
            )


# ------------------------------------------------------------------------------------------------
# one transformer block
# ------------------------------------------------------------------------------------------------


class BlockCache(NamedTuple):
    """What block_backward needs, one op cache per forward step."""

    ln1: reference_ops.LayerNormCache
    qkv: reference_ops.LinearCache
    attn: reference_ops.AttentionCache
    dense: reference_ops.LinearCache
    drop1: reference_ops.DropoutCache
    ln2: reference_ops.LayerNormCache
    fc1: reference_ops.LinearCache
    gelu: reference_ops.GeluCache
    fc2: reference_ops.LinearCache
    drop2: reference_ops.DropoutCache


def block_forward(x, p, alibi, visible, config, kv=None, layer=0, training=False, rng=None):
    """One BLOOM block. x (B, T, C) -> (B, T, C), BlockCache.

    p: this block's params keyed by BLOCK_KEYS. alibi (B, H, S), visible (B, T, S).
    kv: a KVCache to write this block's new keys/values into (and read the past from), or None.
    """
    H, eps = config.n_head, config.layer_norm_epsilon
    post_ln = config.apply_residual_connection_post_layernorm
    p_hidden = config.hidden_dropout if training else 0.0
    p_attn = config.attention_dropout if training else 0.0

    def wb(name):  # a sub-layer's (weight, bias), by its checkpoint name
        return p[f"{name}.weight"], p[f"{name}.bias"]

    # attention half
    ln1, c_ln1 = ops.layernorm_forward(x, *wb("input_layernorm"), eps)
    res1 = ln1 if post_ln else x
    fused, c_qkv = ops.linear_forward(ln1, *wb("self_attention.query_key_value"))  # (B, T, 3C)
    q, k, v = ops.split_heads(fused, H)  # each (B, H, T, D)
    if kv is not None:
        k, v = kv.write(layer, k, v)  # (B, H, S, D): past + new
    ctx, c_attn = ops.attention_forward(q, k, v, alibi, visible, p_attn, rng)  # (B, H, T, D)
    a, c_dense = ops.linear_forward(ops.merge_heads(ctx), *wb("self_attention.dense"))
    a, c_drop1 = ops.dropout_forward(a, p_hidden, rng)
    x1 = a + res1
    # MLP half
    ln2, c_ln2 = ops.layernorm_forward(x1, *wb("post_attention_layernorm"), eps)
    res2 = ln2 if post_ln else x1
    h, c_fc1 = ops.linear_forward(ln2, *wb("mlp.dense_h_to_4h"))  # (B, T, F)
    g, c_gelu = ops.gelu_forward(h)
    m, c_fc2 = ops.linear_forward(g, *wb("mlp.dense_4h_to_h"))  # (B, T, C)
    m, c_drop2 = ops.dropout_forward(m, p_hidden, rng)
    x2 = m + res2
    if not training:
        return x2, None
    return x2, BlockCache(
        c_ln1, c_qkv, c_attn, c_dense, c_drop1, c_ln2, c_fc1, c_gelu, c_fc2, c_drop2
    )


def block_backward(dx2, cache, post_ln):
    """Reverse of block_forward: dx2 (B, T, C) -> dx (B, T, C), grads dict keyed by BLOCK_KEYS."""
    g = {}  # sub-layer name -> (d weight, d bias)
    # MLP half, from `x2 = m + res2` back
    dm = ops.dropout_backward(dx2, cache.drop2)
    dg, *g["mlp.dense_4h_to_h"] = ops.linear_backward(dm, cache.fc2)
    dh = ops.gelu_backward(dg, cache.gelu)
    dln2, *g["mlp.dense_h_to_4h"] = ops.linear_backward(dh, cache.fc1)
    if post_ln:
        dln2 = dln2 + dx2  # residual: res2 = ln2
    dx1, *g["post_attention_layernorm"] = ops.layernorm_backward(dln2, cache.ln2)
    if not post_ln:
        dx1 = dx1 + dx2  # residual: res2 = x1
    # attention half, from `x1 = a + res1` back
    da = ops.dropout_backward(dx1, cache.drop1)
    dmerged, *g["self_attention.dense"] = ops.linear_backward(da, cache.dense)
    H = cache.attn.q.shape[1]
    dq, dk, dv = ops.attention_backward(ops.split_merged_grad(dmerged, H), cache.attn)
    dfused = ops.merge_qkv_grads(dq, dk, dv)  # (B, T, 3C), head-interleaved like the weights
    dln1, *g["self_attention.query_key_value"] = ops.linear_backward(dfused, cache.qkv)
    if post_ln:
        dln1 = dln1 + dx1  # residual: res1 = ln1
    dx, *g["input_layernorm"] = ops.layernorm_backward(dln1, cache.ln1)
    if not post_ln:
        dx = dx + dx1  # residual: res1 = x
    return dx, {
        f"{name}.{kind}": d for name, pair in g.items() for kind, d in zip(("weight", "bias"), pair)
    }


# ------------------------------------------------------------------------------------------------
# the backbone
# ------------------------------------------------------------------------------------------------


class ForwardResult(NamedTuple):
    """What BloomBackbone.forward returns.

    hidden: (B, T, C) float32, final-LayerNorm hidden states.
    hidden_states: None, or L + 1 arrays as HF's output_hidden_states:
        [LN_emb(E[ids]), out block 0, ..., out block L-2, LN_f(out block L-1)].
    saved: None, or (when training=True) the caches `BloomBackbone.backward` needs.
    """

    hidden: np.ndarray
    hidden_states: list | None
    saved: tuple | None


class BloomBackbone:
    """The BLOOM transformer without the head (keras-hub's `BloomBackbone` argument names).

    Args:
        vocabulary_size, num_layers, num_heads, hidden_dim: V, L, H, C.
        intermediate_dim: F (None = 4 * hidden_dim, the only value transformers honours).
        dropout: hidden and attention dropout rate (used only by forward(training=True)).
        layer_norm_epsilon: LayerNorm epsilon.
        apply_residual_connection_post_layernorm: HF's residual mode (False in released models).
        params: a parameter dict (HF names without `transformer.`), or None for a random init.
        seed: seed of the random init.
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim=None,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        *,
        apply_residual_connection_post_layernorm=False,
        params=None,
        seed=0,
    ):
        config = BloomConfig.from_keras_kwargs(
            vocabulary_size,
            num_layers,
            num_heads,
            hidden_dim,
            intermediate_dim,
            dropout,
            layer_norm_epsilon,
            apply_residual_connection_post_layernorm=apply_residual_connection_post_layernorm,
        )
        self._setup(config, params, seed)

    @classmethod
    def from_config(cls, config, params=None, seed=0):
        """A backbone for a BloomConfig, with `params` or a seeded random init."""
        if not isinstance(config, BloomConfig):
            raise ArgumentError(f"config: expected a BloomConfig, found {type(config).__name__}")
        self = cls.__new__(cls)
        self._setup(config, params, seed)
        return self

    def _setup(self, config, params, seed):
        self.config = config
        if params is None:
            check_fits(
                4 * config.num_parameters(),
                f"a random init of {config.num_parameters():,} float32 parameters",
                "choose a smaller config",
            )
            params = init_params(config, seed)
        check_params(params, config)
        self.params = params
        self.slopes = ops.alibi_slopes(config.n_head)  # (H,) float32, fixed by H

    def __call__(self, inputs):
        """keras style: {"token_ids": (B, T), "padding_mask": (B, T)} -> final hidden states (B, T, C)."""
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            raise ArgumentError("inputs: expected a dict with 'token_ids' and 'padding_mask'")
        token_ids = inputs["token_ids"]
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            padding_mask = np.ones(np.shape(token_ids), dtype=bool)
        return self.forward(token_ids, padding_mask).hidden

    def _block_params(self, i):
        return {k: self.params[f"h.{i}.{k}"] for k in BLOCK_KEYS}

    def _check_inputs(self, token_ids, padding_mask, cache):
        token_ids = np.asarray(token_ids)
        if token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer):
            raise ArgumentError(
                f"token_ids: expected a (B, T) integer array, found shape {token_ids.shape} dtype {token_ids.dtype}"
            )
        B, T = token_ids.shape
        if T == 0:
            raise ArgumentError("token_ids: expected at least one token per row, found T = 0")
        V = self.config.vocab_size
        if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= V):
            bad = token_ids[(token_ids < 0) | (token_ids >= V)][0]
            raise ArgumentError(f"token_ids: ids must be in [0, {V}), found {bad}")
        padding_mask = np.asarray(padding_mask)
        S = T + (0 if cache is None else cache.length)
        if padding_mask.shape != (B, S):
            what = "(B, T)" if cache is None else "(B, cache.length + T)"
            raise ArgumentError(
                f"padding_mask: expected shape {what} = {(B, S)}, found {padding_mask.shape}"
            )
        if padding_mask.dtype != bool:
            if not (
                np.issubdtype(padding_mask.dtype, np.number) and np.isin(padding_mask, (0, 1)).all()
            ):
                raise ArgumentError(
                    f"padding_mask: expected bool or 0/1 values, found dtype {padding_mask.dtype} with other values"
                )
            padding_mask = padding_mask.astype(bool)
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise ArgumentError(f"cache: expected a KVCache, found {type(cache).__name__}")
            expect = (self.config.n_layer, B, self.config.n_head, self.config.head_dim)
            found = (cache.key.shape[0], cache.key.shape[1], cache.key.shape[2], cache.key.shape[4])
            if found != expect:
                raise ArgumentError(f"cache: expected (L, B, H, D) = {expect}, found {found}")
        return token_ids.astype(np.int64, copy=False), padding_mask

    def forward(
        self,
        token_ids,
        padding_mask,
        cache=None,
        output_hidden_states=False,
        training=False,
        rng=None,
    ):
        """Run the transformer. Returns a ForwardResult (hidden, hidden_states, saved).

        token_ids (B, T) int; padding_mask (B, S) bool or 0/1 with S = T, or S = cache.length + T
        when `cache` (a KVCache) is given: then token_ids are the new tokens, their keys/values
        are written at [cache.length, cache.length + T) and cache.length advances by T.
        training=True applies dropout (needs `rng`, an np.random.Generator, when a rate is > 0)
        and keeps the activations `backward` needs (no cache allowed then).
        """
        token_ids, padding_mask = self._check_inputs(token_ids, padding_mask, cache)
        cfg = self.config
        if training and cache is not None:
            raise ArgumentError(
                "forward: training=True keeps activations for backward and cannot use a KV cache"
            )
        if (
            training
            and (cfg.hidden_dropout > 0 or cfg.attention_dropout > 0)
            and not isinstance(rng, np.random.Generator)
        ):
            raise ArgumentError("rng: training with dropout needs an np.random.Generator")
        T = token_ids.shape[1]
        alibi = ops.alibi_bias(padding_mask, self.slopes)  # (B, H, S)
        visible = ops.attention_visibility(padding_mask, T)  # (B, T, S)

        x, c_emb = ops.embedding_forward(
            token_ids, self.params["word_embeddings.weight"]
        )  # (B, T, C)
        x, c_ln_emb = ops.layernorm_forward(
            x,
            self.params["word_embeddings_layernorm.weight"],
            self.params["word_embeddings_layernorm.bias"],
            cfg.layer_norm_epsilon,
        )
        hidden_states = [x] if output_hidden_states else None
        block_caches = []
        for i in range(cfg.n_layer):
            x, c_block = block_forward(
                x, self._block_params(i), alibi, visible, cfg, cache, i, training, rng
            )
            block_caches.append(c_block)
            if output_hidden_states and i < cfg.n_layer - 1:
                hidden_states.append(x)
        if cache is not None:
            cache.advance(T)
        hidden, c_ln_f = ops.layernorm_forward(
            x, self.params["ln_f.weight"], self.params["ln_f.bias"], cfg.layer_norm_epsilon
        )
        if output_hidden_states:
            hidden_states.append(hidden)
        saved = (c_emb, c_ln_emb, block_caches, c_ln_f) if training else None
        return ForwardResult(hidden, hidden_states, saved)

    def logits(self, hidden):
        """Tied LM head: hidden (B, T, C) -> logits (B, T, V) float32 = hidden @ E.T.

        For generation pass only the last position, `logits(hidden[:, -1:])`: the head is the
        largest matmul of the model.
        """
        return ops.lm_head_forward(hidden, self.params["word_embeddings.weight"])

    def backward(self, saved, dhidden=None, dlogits=None, hidden=None):
        """All parameter gradients, a dict keyed like `params` (float32).

        saved: ForwardResult.saved from forward(training=True). Give either dhidden (B, T, C),
        the gradient of the final hidden states, or dlogits (B, T, V) together with `hidden`
        (the forward's final hidden states), to backpropagate through the tied head too.
        """
        if saved is None:
            raise ArgumentError(
                "backward: needs the `saved` activations of forward(..., training=True)"
            )
        c_emb, c_ln_emb, block_caches, c_ln_f = saved
        dE_head = None
        if dlogits is not None:
            if hidden is None:
                raise ArgumentError("backward: dlogits needs the forward's final `hidden` states")
            dhidden_head, dE_head = ops.lm_head_backward(
                dlogits, hidden, self.params["word_embeddings.weight"]
            )
            dhidden = dhidden_head if dhidden is None else dhidden + dhidden_head
        if dhidden is None:
            raise ArgumentError("backward: give dhidden or dlogits")
        grads = {}
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = ops.layernorm_backward(dhidden, c_ln_f)
        post_ln = self.config.apply_residual_connection_post_layernorm
        for i in reversed(range(self.config.n_layer)):
            dx, g = block_backward(dx, block_caches[i], post_ln)
            for k in BLOCK_KEYS:
                grads[f"h.{i}.{k}"] = g[k]
        dx, grads["word_embeddings_layernorm.weight"], grads["word_embeddings_layernorm.bias"] = (
            ops.layernorm_backward(dx, c_ln_emb)
        )
        # tied embedding: the lookup's gradient added (in place) to the head's
        grads["word_embeddings.weight"] = ops.embedding_backward(dx, c_emb, dE=dE_head)
        return {k: grads[k] for k in self.params}  # params' key order
