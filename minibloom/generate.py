"""Text generation: prefill the prompt into a preallocated KV cache, then one position per step.

    prompts --(preprocessor: tokenize, LEFT-pad)--> ids (B, P), mask (B, P)
    align:    any padding layout -> left padding (each row's real tokens end in column P - 1)
    prefill:  backbone.forward(ids, mask, cache)  -> logits of the last position (B, V)
    mask:     text generation sets the logits of ids the tokenizer cannot decode to -inf
    step:     choose next ids (B,) -> forward(next[:, None], mask so far, cache) -> logits (B, V)
    stop:     a row stops at its first stop id (kept) and is padded with <pad> afterwards;
              the loop ends when every row stopped or the sequence reaches max_length.

`max_length` counts prompt plus completion tokens, as in keras-hub and HF. The logits are only
computed for the last position (the tied LM head, V x C, is the largest matmul of the model).
The cache is allocated once for `max_length` positions: nothing is reallocated per token except
in contrastive search, which keeps one of k candidate rows (KVCache.reorder copies the filled
part); beam search reorders its rows in place.

Where we follow HF transformers rather than keras-hub, and why (our outputs are a reference for
people porting BLOOM, and HF is the oracle the numbers are checked against):

- Padding side: any layout is accepted: left padding (HF, our preprocessor), right padding (how
  keras-hub packs prompts) or pads in the middle. `generate_ids` first moves each row's real
  tokens, in their order, to the right end of the row (pads first): a stable sort of the row's
  padding mask. New tokens are then appended in one column for all rows, with ALiBi positions =
  cumsum(mask) - 1 (HF), so every row is continued from its own last real token and "a batched row
  equals the same prompt alone" holds to float32 rounding whatever the layout (tested). The
  returned {"token_ids", "padding_mask"} hold the prompts in that left-padded layout (width P
  unchanged) followed by the new tokens; the padding_mask says which positions are real.
  keras-hub instead lets shorter right-padded rows start generating inside the prompt columns.
- BOS: no `<s>` in front of the prompt unless the preprocessor has add_start_token=True (BLOOM was
  trained without it and HF's tokenizer adds none); keras-hub always prepends `<s>` when
  generating, so its outputs differ from HF's for the same text.
- Finished rows: padded with `<pad>` after their stop token (HF). keras-hub keeps generating
  them and hides the extra tokens with the returned mask.
- Stop and pad ids (`stop_token_ids="auto"`, HF's rule): the stop ids are the model's
  generation_config eos_token_id (generation_config.json, else config.json; one id or several);
  if it names none, the tokenizer's `</s>`; with neither, no stop ids. Finished rows are filled
  with generation_config pad_token_id, else the tokenizer's `<pad>`, else the first stop id (HF
  falls back to eos; transformers 5 writes "pad_token_id": null), else 0.
- Undecodable ids: an embedding may have more rows than the tokenizer has tokens (BLOOM: 250,880
  rows, 250,680 tokens). In text generation (the model has a preprocessor) the ids the tokenizer
  has no token for get logits -inf before every sampler, beam and contrastive search included, so
  they are never produced (the stop ids are always allowed). Token-only generation (no
  preprocessor) samples from every row, as HF does.
- Numbers: NaN logits raise ArgumentError, +inf logits are certain tokens, and a tiny temperature
  (1e-40) is the exact T -> 0 limit (greedy), never NaN: see samplers.py, `checked_logits`.
- Memory: the KV cache (with beam search's beams and contrastive search's candidate copies) is
  sized before anything is allocated: `generate`, `generate_ids` and `stream` all pass
  `_checked_inputs` first, which refuses a cache that would not fit (minibloom.memory.check_fits;
  `KVCache` itself runs the same check for callers of decode_steps / beam_search).
- Beam search: HF's algorithm (length penalty, finished-hypothesis pool of num_beams per prompt,
  `early_stopping` True / False / "never", 2 * num_beams candidates per step), so sequences and
  scores equal `transformers` `generate(num_beams=...)`. keras-hub's BeamSampler has no length
  penalty and no finished-beam bookkeeping (it keeps adding log-probs after `</s>`).
- Default sampler: greedy (HF's default; reproducible). keras-hub compiles with an unseeded
  top-k(5) by default.
- Contrastive search follows keras-hub (HF moved it out of the library): among the k most likely
  tokens, argmax of (1 - alpha) * p - alpha * max cosine similarity of the candidate's final
  hidden state with the previous (non-pad) positions'. A candidate of probability 0 (an impossible
  or blocked id) is never chosen, so +inf logits and a tiny temperature give the argmax as for
  every other sampler (keras-hub would let such a candidate win on similarity alone).

Streaming (`stream`) decodes incrementally at the byte level: the bytes of each new token go
through an incremental UTF-8 decoder that holds back an incomplete character until its last byte
arrives, so a piece never ends inside a character and the pieces concatenate to `generate`'s text.

Leaves out: speculative decoding, repetition penalties and other HF logits processors,
stop strings (only single stop token ids, like keras-hub), num_return_sequences for sampling.

Shape legend: B rows (prompts; B * num_beams in beam search), P prompt columns, S = max_length,
V vocabulary, C hidden, K candidates.
"""

import codecs
import time

import numpy as np

from minibloom import memory, samplers
from minibloom.arguments import check_int
from minibloom.dispatch import fast_or_reference
from minibloom.errors import ArgumentError
from minibloom.kvcache import KVCache
from minibloom.samplers import BeamSampler, ContrastiveSampler, GreedySampler, top_k_indices

NEG = np.float32(-1.0e9)  # HF's "impossible" beam score


# -----------------------------------------------------------------------------------------------
# model calls
# -----------------------------------------------------------------------------------------------


def _last_logits(backbone, hidden, blocked_ids=None):
    """Final hidden states (B, T, C) -> logits of the last position (B, V) float32.

    blocked_ids: (N,) ids that must never be chosen (text generation: the ids the tokenizer cannot
    decode); their logits are set to -inf here, the one place every search reads logits from.
    """
    logits = backbone.logits(hidden[:, -1:])[:, 0]
    if blocked_ids is not None and len(blocked_ids):
        logits[:, blocked_ids] = -np.inf
    return logits


def left_align(token_ids, padding_mask):
    """Move each row's real tokens, in their order, to the right end of the row, pads first.

    token_ids, padding_mask: (B, P) in any layout (left or right padding, pads in the middle) ->
    the same (B, P) arrays left-padded. A stable sort of each row's mask puts the False (pad)
    columns first and keeps the real tokens' order; left-padded rows come back unchanged.
    """
    order = np.argsort(padding_mask, axis=1, kind="stable")  # (B, P)
    return np.take_along_axis(token_ids, order, axis=1), np.take_along_axis(
        padding_mask, order, axis=1
    )


def _log_softmax(x):
    """(B, V) float32 -> log-probabilities, float32 (as torch's log_softmax on float32 logits)."""
    m = x.max(axis=-1, keepdims=True)
    shifted = x - m
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


# -----------------------------------------------------------------------------------------------
# token-by-token decoding (greedy, top-k, top-p, random, contrastive)
# -----------------------------------------------------------------------------------------------


def decode_steps(
    backbone,
    token_ids,
    padding_mask,
    max_length,
    sampler,
    stop_token_ids=(),
    pad_token_id=3,
    blocked_ids=None,
):
    """Generate one position per step; a generator yielding (t, next_ids (B,), alive (B,) bool).

    token_ids, padding_mask: (B, P) prompts (any padding layout: they are left-aligned first).
    `alive` marks the rows that emitted next_ids[b] as a real token (rows that stopped earlier get
    pad_token_id and alive False). Stops after position max_length - 1 or when every row has
    emitted a stop id. blocked_ids: ids never chosen (see _last_logits). The low-level loop: it
    checks no arguments; generate_ids and stream_text check them first (_checked_inputs).
    """
    cfg = backbone.config
    token_ids, padding_mask = left_align(token_ids, padding_mask)
    B, P = token_ids.shape
    stop = np.asarray(sorted(stop_token_ids), dtype=np.int64)
    contrastive = isinstance(sampler, ContrastiveSampler) and not sampler.is_greedy
    if sampler.is_greedy and not isinstance(sampler, GreedySampler):
        sampler = GreedySampler()  # temperature 0 means greedy, whatever the sampler
    cache = KVCache.for_config(cfg, B, max_length)
    mask = np.ones(
        (B, max_length), dtype=bool
    )  # (B, S): prompt mask, then every new column visible
    mask[:, :P] = padding_mask
    out = backbone.forward(token_ids, mask[:, :P], cache=cache)  # prefill
    logits = _last_logits(backbone, out.hidden, blocked_ids)
    past_hidden = None
    if contrastive:
        past_hidden = np.zeros((B, max_length, cfg.hidden_size), dtype=np.float32)  # (B, S, C)
        past_hidden[:, :P] = out.hidden
    rng = sampler.make_rng()
    alive = np.ones(B, dtype=bool)
    for t in range(P, max_length):
        if contrastive:
            nxt, cache, next_logits, h = _contrastive_step(
                backbone, cache, logits, past_hidden[:, :t], mask[:, :t], sampler, blocked_ids
            )
        else:
            nxt = sampler.choose(logits, rng)
        nxt = np.where(alive, nxt, pad_token_id).astype(np.int64)
        yield t, nxt, alive.copy()
        alive &= ~np.isin(nxt, stop)
        if t + 1 == max_length or not alive.any():
            return
        if contrastive:
            logits, past_hidden[:, t] = next_logits, h
        else:
            out = backbone.forward(nxt[:, None], mask[:, : t + 1], cache=cache)
            logits = _last_logits(backbone, out.hidden, blocked_ids)


def _contrastive_step(backbone, cache, logits, past_hidden, past_mask, sampler, blocked_ids=None):
    """One contrastive-search step. Runs the k candidates of every row through the model (B*K rows)
    and keeps the winner's cache row, logits and hidden state for the next step. A candidate of
    probability 0 (an impossible or blocked id, or any but the best at a tiny temperature) is never
    chosen, whatever its similarity; the best candidate always has probability > 0.

    Returns (next_ids (B,), cache, next_logits (B, V), next_hidden (B, C)).
    """
    B, V = logits.shape
    K = min(sampler.k, V)
    x = sampler.scaled(logits)
    cand = fast_or_reference(top_k_indices)(x, K)  # (B, K) best first
    top = np.take_along_axis(x, cand, axis=1).astype(np.float64)
    logz = np.log(
        np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
    ) + x.max(-1, keepdims=True)
    probs = np.exp(top - logz)  # (B, K) softmax probabilities of the candidates
    big = cache.repeat(K)  # (B*K rows), row b*K + j is candidate j of row b
    assert past_mask.shape[1] == cache.length, (past_mask.shape, cache.length)
    mask = np.concatenate(
        [np.repeat(past_mask, K, axis=0), np.ones((B * K, 1), dtype=bool)], axis=1
    )  # (B*K, S+1)
    out = backbone.forward(cand.reshape(B * K, 1), mask, cache=big)
    h = out.hidden[:, 0].reshape(B, K, -1)  # (B, K, C)
    # cosine similarity of each candidate with every previous real position, max over positions
    hn = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    pn = past_hidden / np.maximum(
        np.linalg.norm(past_hidden, axis=-1, keepdims=True), 1e-12
    )  # (B, S, C)
    sim = np.einsum("bkc,bsc->bks", hn, pn)  # (B, K, S)
    sim = np.where(past_mask[:, None, :], sim, -np.inf).max(axis=-1)  # (B, K)
    score = np.where(probs > 0.0, (1.0 - sampler.alpha) * probs - sampler.alpha * sim, -np.inf)
    j = np.argmax(score, axis=-1)  # (B,)
    rows = np.arange(B) * K + j
    cand_logits = _last_logits(backbone, out.hidden, blocked_ids)  # (B*K, V)
    return cand[np.arange(B), j], big.reorder(rows), cand_logits[rows], h[np.arange(B), j]


def generate_ids(
    backbone,
    token_ids,
    padding_mask,
    max_length,
    sampler=None,
    stop_token_ids=(),
    pad_token_id=3,
    blocked_ids=None,
):
    """Token-level generation: prompts (B, P) -> {"token_ids", "padding_mask"} (B, P + N).

    The prompts may be padded on either side or have pads in the middle: each row is continued
    from its own real tokens, as if it were alone. The result holds the prompts LEFT-aligned (each
    row's real tokens moved to the right end of its P columns, in order; see left_align), then the
    N new tokens (N <= max_length - P). padding_mask is True on real prompt tokens and on generated
    tokens up to and including each row's stop id. Beam search adds "scores".
    blocked_ids: (N,) ids never generated (text generation passes the undecodable ids).
    """
    sampler = GreedySampler() if sampler is None else sampler
    token_ids, padding_mask = _checked_inputs(
        backbone, token_ids, padding_mask, max_length, sampler, stop_token_ids, pad_token_id
    )
    if (
        isinstance(sampler, BeamSampler)
        and not sampler.is_greedy
        and token_ids.shape[1] < max_length
    ):
        return beam_search(
            backbone,
            token_ids,
            padding_mask,
            max_length,
            sampler,
            stop_token_ids,
            pad_token_id,
            blocked_ids,
        )
    B, P = token_ids.shape
    ids = np.full((B, max_length), pad_token_id, dtype=np.int64)  # (B, S)
    keep = np.zeros((B, max_length), dtype=bool)  # (B, S)
    ids[:, :P], keep[:, :P] = token_ids, padding_mask
    end = P
    if P < max_length:
        steps = decode_steps(
            backbone,
            token_ids,
            padding_mask,
            max_length,
            sampler,
            stop_token_ids,
            pad_token_id,
            blocked_ids,
        )
        for t, nxt, alive in steps:
            ids[:, t], keep[:, t], end = nxt, alive, t + 1
    return {"token_ids": ids[:, :end], "padding_mask": keep[:, :end]}


def _checked_inputs(
    backbone, token_ids, padding_mask, max_length, sampler, stop_token_ids, pad_token_id
):
    """The gate every generation path passes first (generate_ids, hence generate and beam search,
    and stream_text): the prompt arrays, the stop and pad ids, the KV-cache size (before anything
    is allocated). Returns (token_ids, padding_mask) left-aligned (see left_align)."""
    token_ids, padding_mask = _check_prompt_arrays(token_ids, padding_mask, max_length)
    V = backbone.config.vocab_size
    _check_token_ids("stop_token_ids", stop_token_ids, V)
    _check_token_ids("pad_token_id", (pad_token_id,), V)
    _check_cache_fits(
        backbone.config, token_ids.shape[0] * _cache_rows_per_prompt(sampler), max_length
    )
    return left_align(token_ids, padding_mask)


def _check_token_ids(name, ids, vocab_size):
    """Stop and pad ids must be rows of the embedding: ids the model can read and emit."""
    for i in ids:
        if not 0 <= check_int(name, i) < vocab_size:
            raise ArgumentError(
                f"{name}: {int(i)} is outside the model's vocabulary [0, {vocab_size})"
            )


def _cache_rows_per_prompt(sampler):
    """KV-cache rows one prompt needs: one, one per beam, or one per contrastive candidate."""
    if isinstance(sampler, BeamSampler):
        return sampler.num_beams
    if isinstance(sampler, ContrastiveSampler):
        return sampler.k + 1
    return 1


def _check_cache_fits(config, rows, max_length):
    """Refuse, before allocating, a KV cache that cannot fit in memory.

    The cache holds keys and values for every layer: 2 * L * rows * H * max_length * D float32.
    """
    need = 2 * config.n_layer * rows * config.hidden_size * max_length * 4
    memory.check_fits(
        need,
        f"max_length {max_length}: the KV cache for {rows} row(s)",
        "lower max_length, the batch size or the beams",
    )


def _check_prompt_arrays(token_ids, padding_mask, max_length):
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer):
        raise ArgumentError(
            f"token_ids: expected a (B, P) integer array, found shape {token_ids.shape} dtype {token_ids.dtype}"
        )
    if 0 in token_ids.shape:
        raise ArgumentError(
            f"token_ids: expected at least one prompt of at least one column, found shape {token_ids.shape}"
        )
    padding_mask = np.asarray(padding_mask)
    if padding_mask.shape != token_ids.shape:
        raise ArgumentError(
            f"padding_mask: expected shape {token_ids.shape} like token_ids, found {padding_mask.shape}"
        )
    padding_mask = padding_mask.astype(bool)
    empty = np.flatnonzero(~padding_mask.any(axis=1))
    if empty.size:
        raise ArgumentError(f"prompt {int(empty[0])} has no tokens (its padding_mask is all False)")
    max_length = check_int("max_length", max_length, lo=1)
    if token_ids.shape[1] > max_length:
        raise ArgumentError(
            f"max_length {max_length} counts prompt + new tokens, but the prompt already has {token_ids.shape[1]} tokens"
        )
    return token_ids.astype(np.int64), padding_mask


# -----------------------------------------------------------------------------------------------
# beam search (HF transformers' algorithm)
# -----------------------------------------------------------------------------------------------


def beam_search(
    backbone,
    token_ids,
    padding_mask,
    max_length,
    sampler,
    stop_token_ids=(),
    pad_token_id=3,
    blocked_ids=None,
):
    """HF beam search. Returns {"token_ids": (B, R, P + N), "padding_mask", "scores": (B, R)} with
    R = num_beams if sampler.return_all_beams else 1 (then the beam axis is dropped: (B, P + N)).
    The prompts are left-aligned first (left_align), as in generate_ids; blocked_ids are never
    generated (their log-probabilities are -inf).

    Per prompt it keeps `num_beams` running beams and a pool of `num_beams` finished ones. Each
    step takes the 2 * num_beams (more with several stop ids) best continuations over all
    beams x vocabulary by accumulated log-probability; those ending in a stop id (or reaching
    max_length) that rank among the first num_beams enter the pool with score
    sum(log p) / generated_length ** length_penalty; the best num_beams others keep running.
    All score arithmetic is float32 with -1e9 for "impossible", as in transformers, so ties and
    roundings match.
    """
    nb, lp, early = sampler.num_beams, sampler.length_penalty, sampler.early_stopping
    token_ids, padding_mask = left_align(token_ids, padding_mask)
    B, P = token_ids.shape
    V = backbone.config.vocab_size
    stop = np.asarray(sorted(stop_token_ids), dtype=np.int64)
    K = max(2, 1 + len(stop)) * nb  # candidates kept per step
    top_nb = np.arange(K) < nb  # (K,) only these may enter the finished pool
    fill = pad_token_id

    running = np.full((B, nb, max_length), fill, dtype=np.int64)  # (B, nb, S)
    running[:, :, :P] = token_ids[:, None, :]
    running_scores = np.zeros((B, nb), dtype=np.float32)
    running_scores[:, 1:] = NEG  # only beam 0 is live at first, so the beams do not start identical
    finished = running.copy()  # (B, nb, S) the pool of finished hypotheses
    finished_scores = np.full((B, nb), NEG, dtype=np.float32)
    finished_len = np.zeros((B, nb), dtype=np.int64)  # generated tokens of each pooled hypothesis
    is_finished = np.zeros((B, nb), dtype=bool)
    may_improve = np.ones((B, 1), dtype=bool)  # HF's is_early_stop_heuristic_unsatisfied

    # prefill the B prompts once, then copy each row into its num_beams beams
    cache = KVCache.for_config(backbone.config, B, max_length)
    out = backbone.forward(token_ids, padding_mask, cache=cache)
    logits = np.repeat(_last_logits(backbone, out.hidden, blocked_ids), nb, axis=0)  # (B*nb, V)
    cache = cache.repeat(nb)
    mask = np.ones((B * nb, max_length), dtype=bool)  # (B*nb, S)
    mask[:, :P] = np.repeat(padding_mask, nb, axis=0)

    cur = P
    while True:
        logp = _log_softmax(sampler.scaled(logits)).reshape(B, nb, V) + running_scores[:, :, None]
        logp = logp.reshape(B, nb * V)  # (B, nb*V) accumulated score of every continuation
        idx = fast_or_reference(top_k_indices)(logp, K)  # (B, K) best first
        cand_scores = np.take_along_axis(logp, idx, axis=1)  # (B, K) float32
        src_beam, tok = idx // V, idx % V
        cand = np.take_along_axis(running, src_beam[:, :, None], axis=1)  # (B, K, S)
        cand[:, :, cur] = tok
        hits = np.isin(tok, stop) | (cur + 1 >= max_length)  # (B, K) this candidate ends here

        # the best num_beams candidates that did not end keep running
        live_scores = cand_scores + hits.astype(np.float32) * NEG
        keep = fast_or_reference(top_k_indices)(live_scores, nb)  # (B, nb)
        running = np.take_along_axis(cand, keep[:, :, None], axis=1)
        running_scores = np.take_along_axis(live_scores, keep, axis=1)
        beam_rows = (
            np.take_along_axis(src_beam, keep, axis=1) + np.arange(B)[:, None] * nb
        )  # (B, nb)

        # candidates that ended enter the pool if they beat its worst member
        just_done = hits & top_nb[None, :]
        pool_scores = (cand_scores / np.float32((cur + 1 - P) ** lp)).astype(np.float32)
        pool_full = is_finished.all(axis=1, keepdims=True) & (early is True)
        pool_scores = pool_scores + pool_full.astype(np.float32) * NEG
        pool_scores = pool_scores + (~may_improve).astype(np.float32) * NEG
        pool_scores = pool_scores + (~just_done).astype(np.float32) * NEG
        merged_scores = np.concatenate([finished_scores, pool_scores], axis=1)  # (B, nb + K)
        best = fast_or_reference(top_k_indices)(merged_scores, nb)  # (B, nb)
        finished = np.take_along_axis(
            np.concatenate([finished, cand], axis=1), best[:, :, None], axis=1
        )
        finished_scores = np.take_along_axis(merged_scores, best, axis=1)
        new_len = np.broadcast_to(np.int64(cur + 1 - P), (B, K))
        finished_len = np.take_along_axis(
            np.concatenate([finished_len, new_len], axis=1), best, axis=1
        )
        is_finished = np.take_along_axis(
            np.concatenate([is_finished, just_done], axis=1), best, axis=1
        )

        cur += 1
        # HF's stopping heuristic: can the best running beam still beat the pool's worst?
        if early == "never" and lp > 0.0:
            best_len = max_length - P
        else:
            best_len = cur - P
        best_running = running_scores[:, :1] / np.float32(best_len**lp)
        worst_done = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)
        may_improve = may_improve & (best_running > worst_done).any(axis=-1, keepdims=True)
        open_beams = not (is_finished.all() and early is True)
        if not (may_improve.any() and open_beams and not hits.all()):
            break
        # follow the surviving beams: reorder the cache rows, then feed each beam's new token
        cache.reorder(beam_rows.reshape(-1), in_place=True)  # (B*nb) rows, no new cache
        out = backbone.forward(
            running[:, :, cur - 1].reshape(B * nb, 1), mask[:, :cur], cache=cache
        )
        logits = _last_logits(backbone, out.hidden, blocked_ids)

    R = nb if sampler.return_all_beams else 1
    n = int(finished_len[:, :R].max())
    ids = finished[:, :R, : P + n]  # (B, R, P + N)
    keep_mask = np.zeros(ids.shape, dtype=bool)
    keep_mask[:, :, :P] = padding_mask[:, None, :]
    keep_mask[:, :, P:] = np.arange(n)[None, None, :] < finished_len[:, :R, None]
    result = {"token_ids": ids, "padding_mask": keep_mask, "scores": finished_scores[:, :R]}
    if not sampler.return_all_beams:
        result = {k: v[:, 0] for k, v in result.items()}
    return result


# -----------------------------------------------------------------------------------------------
# text in, text out (BloomCausalLM.generate / stream)
# -----------------------------------------------------------------------------------------------


def _tokenizer(lm):
    return None if lm.preprocessor is None else lm.preprocessor.tokenizer


def resolve_stop_ids(lm, stop_token_ids):
    """The stop ids of a call: None -> none; a tuple -> those; "auto" -> HF's rule: the generation
    config's eos ids, else the tokenizer's `</s>`, else none."""
    if stop_token_ids is None:
        return ()
    if isinstance(stop_token_ids, str):
        if stop_token_ids != "auto":
            raise ArgumentError(
                f"stop_token_ids must be 'auto', None or a tuple of ids, found {stop_token_ids!r}"
            )
        eos = tuple(int(i) for i in lm.generation_config.eos_token_id)
        if eos:
            return eos
        tok = _tokenizer(lm)
        return () if tok is None or tok.end_token_id is None else (int(tok.end_token_id),)
    try:
        ids = tuple(int(i) for i in stop_token_ids)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"stop_token_ids must be 'auto', None or a tuple of ids, found {stop_token_ids!r}"
        ) from None
    return ids


def _pad_id(lm, stop_ids=()):
    """What finished rows are filled with: the generation config's pad id, else the tokenizer's
    `<pad>`, else the first stop id (of this call, else of the generation config: HF pads with
    eos), else 0."""
    gc, tok = lm.generation_config, _tokenizer(lm)
    candidates = (
        gc.pad_token_id,
        None if tok is None else tok.pad_token_id,
        *stop_ids,
        *gc.eos_token_id,
    )
    return next((int(i) for i in candidates if i is not None), 0)


def undecodable_ids(tokenizer, vocab_size):
    """Ids in [0, vocab_size) the tokenizer has no token for: (N,) int64, ascending.

    They are the unused ids below tokenizer.vocabulary_size() (holes) and every id from there up
    to the embedding size (BLOOM: ids 250,680 ... 250,879).
    """
    vocab = tokenizer.get_vocabulary()
    n = min(len(vocab), vocab_size)
    holes = [i for i in range(n) if vocab[i] is None]
    return np.concatenate(
        [np.asarray(holes, dtype=np.int64), np.arange(n, vocab_size, dtype=np.int64)]
    )


def _blocked_ids(lm, stop_ids):
    """Ids text generation never produces: the undecodable ones, except the stop ids (asked for);
    None without a preprocessor (token-only generation can produce every id)."""
    tok = _tokenizer(lm)
    if tok is None:
        return None
    return np.setdiff1d(
        undecodable_ids(tok, lm.backbone.config.vocab_size), np.asarray(stop_ids, dtype=np.int64)
    )


def _prepare(lm, inputs, max_length):
    """inputs -> (token_ids (B, P), padding_mask (B, P), max_length, single string?)."""
    if lm.preprocessor is None:
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            raise ArgumentError(
                "inputs: without a preprocessor pass a dict {'token_ids', 'padding_mask'}"
            )
        ids = np.atleast_2d(np.asarray(inputs["token_ids"]))
        mask = np.atleast_2d(np.asarray(inputs.get("padding_mask", np.ones(ids.shape, dtype=bool))))
        if max_length is None:
            # keras-hub: the inputs are padded to the length wanted and the padded positions are
            # filled; so the width is max_length and trailing all-pad columns are room to generate
            max_length = ids.shape[-1]
            if mask.shape == ids.shape and ids.ndim == 2:
                real = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=0))
                width = int(real[-1]) + 1 if real.size else 0
                ids, mask = ids[:, :width], mask[:, :width]
        return ids, mask, max_length, False
    if isinstance(inputs, dict):
        ids = np.atleast_2d(np.asarray(inputs["token_ids"]))
        mask = np.atleast_2d(np.asarray(inputs.get("padding_mask", np.ones(ids.shape, dtype=bool))))
        single = False
    else:
        single = isinstance(inputs, str)
        packed = lm.preprocessor.generate_preprocess(inputs)
        ids, mask = packed["token_ids"], packed["padding_mask"]
    if max_length is None:
        max_length = lm.preprocessor.sequence_length
    return ids, mask, max_length, single


def generate(
    lm,
    inputs,
    max_length=None,
    stop_token_ids="auto",
    strip_prompt=False,
    stream=False,
    sampler=None,
):
    """BloomCausalLM.generate: see its docstring. `sampler` defaults to lm.sampler."""
    if stream:
        return stream_text(lm, inputs, max_length, stop_token_ids, strip_prompt, sampler)
    sampler = _sampler_of(lm, sampler)
    ids, mask, max_length, single = _prepare(lm, inputs, max_length)
    P = ids.shape[1]
    stops = resolve_stop_ids(lm, stop_token_ids)
    out = generate_ids(
        lm.backbone,
        ids,
        mask,
        max_length,
        sampler,
        stops,
        _pad_id(lm, stops),
        _blocked_ids(lm, stops),
    )
    if lm.preprocessor is None or isinstance(inputs, dict):
        if strip_prompt:
            out = {k: (v[..., P:] if k != "scores" else v) for k, v in out.items()}
        return out
    view = (
        {"token_ids": out["token_ids"][..., P:], "padding_mask": out["padding_mask"][..., P:]}
        if strip_prompt
        else out
    )
    if view["token_ids"].ndim == 3:  # all beams: a list (per prompt) of lists (per beam) of strings
        texts = [
            lm.preprocessor.generate_postprocess({"token_ids": t, "padding_mask": m})
            for t, m in zip(view["token_ids"], view["padding_mask"])
        ]
        return (texts[0] if single else texts), out["scores"]
    texts = lm.preprocessor.generate_postprocess(view)
    if isinstance(texts, str):
        texts = [texts]
    return texts[0] if single else texts


def _sampler_of(lm, sampler):
    if sampler is None:
        sampler = getattr(lm, "sampler", None)
    return samplers.get(sampler)


class Utf8Pieces:
    """Token ids -> text pieces that never split a UTF-8 character.

    Each id is turned into its bytes (the ByteLevel map in reverse; special tokens give nothing)
    and fed to an incremental UTF-8 decoder, which returns only complete characters and keeps an
    unfinished one until its remaining bytes arrive. `flush()` ends the stream: leftover bytes of
    an unfinished character become U+FFFD, as the tokenizer's full `decode` does.
    """

    def __init__(self, tokenizer):
        from minibloom.tokenizer import bytes_to_unicode

        self._tokenizer = tokenizer
        self._char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
        specials = (
            tokenizer.start_token_id,
            tokenizer.end_token_id,
            tokenizer.pad_token_id,
        )  # as generate_postprocess
        self._skip = {int(i) for i in specials if i is not None}
        self._bytes = {}  # id -> bytes, for the ids seen so far
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _token_bytes(self, i):
        if i not in self._bytes:
            token = self._tokenizer.id_to_token(i)
            if token is None or i in self._skip:
                self._bytes[i] = b""
            else:  # a character outside the byte map stands for its own UTF-8 bytes (as HF)
                self._bytes[i] = b"".join(
                    bytes([self._char_to_byte[c]]) if c in self._char_to_byte else c.encode("utf-8")
                    for c in token
                )
        return self._bytes[i]

    def push(self, ids):
        """Text completed by these ids (possibly '')."""
        return self._utf8.decode(b"".join(self._token_bytes(int(i)) for i in ids))

    def flush(self):
        return self._utf8.decode(b"", final=True)


def stream_text(
    lm, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False, sampler=None, stats=None
):
    """Yield the text of one prompt piece by piece as tokens are generated.

    The pieces concatenate to `generate(lm, inputs, ...)` for the same arguments (the prompt first,
    unless strip_prompt). Beam search only knows its best beam at the end: it yields the whole
    completion as one piece. If `stats` is a dict it is filled with prompt_tokens, new_tokens,
    prefill_seconds (prompt forward + first token), decode_seconds (the rest), total_seconds.
    """
    if lm.preprocessor is None or not isinstance(inputs, str):
        raise ArgumentError("stream: needs a preprocessor and a single string prompt")
    sampler = _sampler_of(lm, sampler)
    ids, mask, max_length, _ = _prepare(lm, inputs, max_length)
    stops = resolve_stop_ids(lm, stop_token_ids)
    pad, blocked = _pad_id(lm, stops), _blocked_ids(lm, stops)
    ids, mask = _checked_inputs(
        lm.backbone, ids, mask, max_length, sampler, stops, pad
    )  # before any output
    stats = {} if stats is None else stats
    stats.update(
        prompt_tokens=int(mask[0].sum()),
        new_tokens=0,
        prefill_seconds=0.0,
        decode_seconds=0.0,
        total_seconds=0.0,
    )
    pieces = Utf8Pieces(lm.preprocessor.tokenizer)
    if not strip_prompt:
        yield from filter(None, [pieces.push(ids[0][mask[0]])])
    start = time.perf_counter()
    if isinstance(sampler, BeamSampler) and not sampler.is_greedy:
        out = generate_ids(lm.backbone, ids, mask, max_length, sampler, stops, pad, blocked)
        P = ids.shape[1]
        new = out["token_ids"][0, P:][out["padding_mask"][0, P:]]
        stats.update(new_tokens=len(new), prefill_seconds=time.perf_counter() - start)
        stats["total_seconds"] = stats["prefill_seconds"]
        yield from filter(None, [pieces.push(new), pieces.flush()])
        return
    if ids.shape[1] < max_length:
        for _, nxt, alive in decode_steps(
            lm.backbone, ids, mask, max_length, sampler, stops, pad, blocked
        ):
            if not alive[0]:
                break
            stats["new_tokens"] += 1
            if stats["new_tokens"] == 1:
                stats["prefill_seconds"] = time.perf_counter() - start
            piece = pieces.push(nxt[:1])
            if piece:
                yield piece
    stats["total_seconds"] = time.perf_counter() - start
    stats["decode_seconds"] = stats["total_seconds"] - stats["prefill_seconds"]
    tail = pieces.flush()
    if tail:
        yield tail


__all__ = [
    "generate",
    "generate_ids",
    "beam_search",
    "decode_steps",
    "stream_text",
    "left_align",
    "undecodable_ids",
    "Utf8Pieces",
]
