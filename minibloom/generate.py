"""Text generation: prefill the prompt into a preallocated KV cache, then one position per step.

    prompts --(preprocessor: tokenize, LEFT-pad)--> ids (B, P), mask (B, P)
    align:    any padding layout -> left padding (each row's real tokens end in column P - 1)
    prefill:  backbone.forward(ids, mask, cache)  -> logits of the last position (B, V)
    mask:     text generation sets the logits of ids the tokenizer cannot decode to -inf
    step:     choose next ids (B,) -> forward(next[:, None], mask so far, cache) -> logits (B, V)
    stop:     a row stops at its first stop id (kept) and is padded with <pad> afterwards;
              the loop ends when every row stopped or the sequence reaches max_length.

The loops themselves belong to the samplers (samplers.py: `Sampler.search` is the token-by-token
loop every token sampler shares; beam and contrastive search bring their own): they drive a
`Decoder`, the model and its KV cache seen as prefill / step / reorder (keras-hub's `next`
callback seam). This module builds the Decoder, checks the inputs and turns ids into text.

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
  `KVCache` itself runs the same check for callers of decode_steps).
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

- Generation controls (HF's keywords; `generate(..., repetition_penalty=1.3)`): the logits
  processors of processors.py (order documented there) run in `Decoder.process`, which every
  search calls before choosing (beam search on the log-softmax, as HF); stop strings
  (`StopStrings`, HF's StopStringCriteria: the text overlapping the last token contains the
  string) end a row as a stop id does; `max_new_tokens` sets max_length = P + max_new_tokens
  (the prompts are left-aligned to width P, so every row gets that many, whatever its padding);
  `num_return_sequences` repeats each prompt for the random samplers and returns the best beams
  of beam search (rows prompt by prompt, HF's layout). A control not passed comes from
  generation_config.json (`lm.generation_config.extra`), HF's mechanism. Where we differ: a row
  that meets a stop string is padded like a row that met a stop id, also when the call has no
  stop ids (HF then lets it run on while other rows generate). With beam search a stop string
  ends a candidate as a stop id does (HF applies every stopping criterion to each candidate).

Leaves out: speculative decoding, sequence_bias / min_length / forced BOS-EOS processors, stop
strings in beam search.

Shape legend: B rows (prompts; B * num_beams in beam search), P prompt columns, S = max_length,
V vocabulary, C hidden, K candidates.
"""

import codecs
import copy
import time

import numpy as np

from minibloom import memory, samplers
from minibloom.arguments import check_int
from minibloom.errors import ArgumentError
from minibloom.kvcache import KVCache
from minibloom.processors import LogitsProcessor
from minibloom.samplers import GreedySampler

# -----------------------------------------------------------------------------------------------
# the model as a search sees it
# -----------------------------------------------------------------------------------------------


def left_align(token_ids, padding_mask):
    """Move each row's real tokens, in their order, to the right end of the row, pads first.

    token_ids, padding_mask: (B, P) in any layout (left or right padding, pads in the middle) ->
    the same (B, P) arrays left-padded. A stable sort of each row's mask puts the False (pad)
    columns first and keeps the real tokens' order; left-padded rows come back unchanged.
    """
    order = np.argsort(padding_mask, axis=1, kind="stable")  # (B, P)
    aligned_ids = np.take_along_axis(token_ids, order, axis=1)
    return aligned_ids, np.take_along_axis(padding_mask, order, axis=1)


class Decoder:
    """The model and its KV cache, as the samplers' search loops drive them (see samplers.py).

    prefill(ids, mask) -> logits (B, V) of the last prompt position; step(next_ids (R,)) ->
    logits (R, V) after appending one column; `hidden` holds the final hidden states (R, T, C) of
    the last call. repeat(n) gives every cache row n copies (beams), reorder(rows) keeps the given
    rows (beam bookkeeping, contrastive winners), fork(n) is a copy with every row n times
    (contrastive candidates) and adopt(other) takes over such a copy's cache. blocked_ids: ids
    whose logits are set to -inf before any sampler sees them (text generation: the ids the
    tokenizer cannot decode).

    The decoder keeps the sequences so far (`ids` (R, S), filled up to `length`), so that every
    search applies the generation controls in one place: `process(scores)` runs the call's
    processors.LogitsProcessor on them (greedy, sampling and contrastive search pass the logits,
    beam search their log-softmax, as HF), and `stopped(next_ids)` says which rows' text now ends
    with one of the call's stop strings (a StopStrings; all False without one).
    """

    def __init__(self, backbone, max_length, blocked_ids=None, processor=None, stop_strings=None):
        self.backbone, self.max_length = backbone, max_length
        self.blocked_ids = blocked_ids if blocked_ids is not None and len(blocked_ids) else None
        self.processor = processor if processor is not None and processor.active else None
        self.stop_strings = stop_strings
        self.cache = self.mask = self.hidden = None
        self.ids = self.first = None  # (R, S) sequences so far, (R,) first real column
        self.length = self.prompt_width = 0

    def _logits(self, hidden):
        self.hidden = hidden
        logits = self.backbone.logits(hidden[:, -1:])[:, 0]  # (R, V): the last position only
        if self.blocked_ids is not None:
            logits[:, self.blocked_ids] = -np.inf
        return logits

    def process(self, scores):
        """The call's logits processors applied to scores (R, V) of the next position."""
        if self.processor is None:
            return scores
        seq = self.ids[:, : self.length]
        return self.processor(scores, seq, self.prompt_width, self.first)

    def stopped(self, next_ids):
        """(R,) bool: the rows whose text ends with a stop string once next_ids are appended."""
        if self.stop_strings is None:
            return np.zeros(len(next_ids), dtype=bool)
        return self.stop_strings.push(next_ids)

    def candidates_stopped(self, seqs, length, prompt_mask):
        """(R,) bool for candidate sequences (R, S) of `length` ids (beam search): which end with
        a stop string. prompt_mask (R, P) marks each candidate's real prompt columns."""
        if self.stop_strings is None:
            return np.zeros(len(seqs), dtype=bool)
        return self.stop_strings.ends(seqs, length, prompt_mask)

    def prefill(self, token_ids, padding_mask):
        B, P = token_ids.shape
        self.cache = KVCache.for_config(self.backbone.config, B, self.max_length)
        self.mask = np.ones((B, self.max_length), dtype=bool)  # (B, S): prompt mask, then all new
        self.mask[:, :P] = padding_mask
        self.ids = np.zeros((B, self.max_length), dtype=np.int64)
        self.ids[:, :P] = token_ids
        self.first = np.argmax(padding_mask, axis=1)  # HF: the left padding is not "seen"
        self.length = self.prompt_width = P
        if self.stop_strings is not None:
            self.stop_strings.start(token_ids, padding_mask)
        return self._logits(self.backbone.forward(token_ids, padding_mask, cache=self.cache).hidden)

    def step(self, next_ids):
        t = self.cache.length + 1
        self.ids[:, self.length] = next_ids
        self.length += 1
        out = self.backbone.forward(next_ids[:, None], self.mask[:, :t], cache=self.cache)
        return self._logits(out.hidden)

    def repeat(self, n):
        self.cache = self.cache.repeat(n)
        self.mask = np.repeat(self.mask, n, axis=0)
        self.ids, self.first = np.repeat(self.ids, n, axis=0), np.repeat(self.first, n)

    def reorder(self, rows):
        rows = np.asarray(rows)
        in_place = len(rows) == self.mask.shape[0]  # same row count: no new cache (beam search)
        self.cache = self.cache.reorder(rows, in_place=in_place)
        self.mask = self.mask[rows]
        self.ids, self.first = self.ids[rows], self.first[rows]

    def fork(self, n):
        other = Decoder(self.backbone, self.max_length, self.blocked_ids, self.processor)
        other.cache, other.mask = self.cache.repeat(n), np.repeat(self.mask, n, axis=0)
        other.ids, other.first = np.repeat(self.ids, n, axis=0), np.repeat(self.first, n)
        other.length, other.prompt_width = self.length, self.prompt_width
        return other

    def adopt(self, other):
        self.cache, self.mask, self.hidden = other.cache, other.mask, other.hidden
        self.ids, self.first, self.length = other.ids, other.first, other.length


class StopStrings:
    """HF's stop strings (StopStringCriteria): a row stops at the token whose text completes one
    of the strings, i.e. the string occurs in the row's text (prompt included, as HF checks the
    whole sequence) overlapping that last token, which may run past the string's end ("st" +
    "opera" stops on "stop"). Compared as UTF-8 bytes; the stopping token is kept."""

    def __init__(self, token_bytes, strings):
        self.token_bytes = token_bytes  # id -> bytes (Utf8Pieces' map)
        self.targets = [s.encode("utf-8") for s in strings]
        self.keep = max(len(t) for t in self.targets)
        self.tails = []  # per row: the last `keep` bytes of its text

    def start(self, token_ids, padding_mask):
        self.tails = [
            b"".join(self.token_bytes(int(i)) for i in row[m])[-self.keep :]
            for row, m in zip(token_ids, padding_mask)
        ]

    def push(self, next_ids):
        """Append one token per row -> (R,) bool: the rows whose new token completes a string."""
        hits = np.zeros(len(next_ids), dtype=bool)
        for r, i in enumerate(next_ids):
            piece, tail = self.token_bytes(int(i)), self.tails[r]
            # an occurrence overlapping the piece starts at most len(t) - 1 bytes before it
            hits[r] = bool(piece) and any(
                t in tail[max(0, len(tail) - len(t) + 1) :][: len(t) - 1] + piece
                for t in self.targets
            )
            self.tails[r] = (tail + piece)[-self.keep :]
        return hits

    def ends(self, seqs, length, prompt_mask):
        """Beam search's stateless check (HF applies its criteria to every candidate sequence):
        seqs (R, S) ids filled up to `length`, prompt_mask (R, P) -> (R,) bool: the rows whose
        last token completes a string. The text before it is read back token by token (skipping
        the prompt's padding) only as far as a string can reach."""
        P = prompt_mask.shape[1]
        hits = np.zeros(len(seqs), dtype=bool)
        for r, row in enumerate(seqs):
            piece, before, j = self.token_bytes(int(row[length - 1])), b"", length - 2
            while j >= 0 and len(before) < self.keep - 1:
                if j >= P or prompt_mask[r, j]:
                    before = self.token_bytes(int(row[j])) + before
                j -= 1
            hits[r] = bool(piece) and any(
                t in before[max(0, len(before) - len(t) + 1) :] + piece for t in self.targets
            )
        return hits


def _run(search):
    """Drive a sampler's search: (list of its (t, next_ids, alive) steps, its return value)."""
    steps = []
    while True:
        try:
            steps.append(next(search))
        except StopIteration as done:
            return steps, done.value


def decode_steps(
    backbone,
    token_ids,
    padding_mask,
    max_length,
    sampler,
    stop_token_ids=(),
    pad_token_id=3,
    blocked_ids=None,
    processor=None,
):
    """The steps of a token-by-token search, as they happen: (t, next_ids (B,), alive (B,) bool).

    token_ids, padding_mask: (B, P) prompts (any padding layout: they are left-aligned first).
    The low-level loop (sampler.search on a fresh Decoder): it checks no arguments; generate_ids
    and stream_text check them first (_checked_inputs). Beam search yields no steps here.
    """
    token_ids, padding_mask = left_align(token_ids, padding_mask)
    decoder = Decoder(backbone, max_length, blocked_ids, processor)
    return sampler.search(
        decoder, token_ids, padding_mask, max_length, stop_token_ids, pad_token_id
    )


def generate_ids(
    backbone,
    token_ids,
    padding_mask,
    max_length,
    sampler=None,
    stop_token_ids=(),
    pad_token_id=3,
    blocked_ids=None,
    processor=None,
    stop_strings=None,
):
    """Token-level generation: prompts (B, P) -> {"token_ids", "padding_mask"} (B, P + N).

    The prompts may be padded on either side or have pads in the middle: each row is continued
    from its own real tokens, as if it were alone. The result holds the prompts LEFT-aligned (each
    row's real tokens moved to the right end of its P columns, in order; see left_align), then the
    N new tokens (N <= max_length - P). padding_mask is True on real prompt tokens and on generated
    tokens up to and including each row's stop id. Beam search returns its own dict, with
    "scores" (and a beam axis with return_all_beams). blocked_ids: (N,) ids never generated (text
    generation passes the undecodable ids). processor: a processors.LogitsProcessor (HF's
    generation controls); stop_strings: a StopStrings (rows stop where their text ends with one).
    """
    sampler = GreedySampler() if sampler is None else sampler
    token_ids, padding_mask = _checked_inputs(
        backbone, token_ids, padding_mask, max_length, sampler, stop_token_ids, pad_token_id
    )
    if processor is not None:
        processor.check_vocabulary(backbone.config.vocab_size)
    decoder = Decoder(backbone, max_length, blocked_ids, processor, stop_strings)
    search = sampler.search(
        decoder, token_ids, padding_mask, max_length, stop_token_ids, pad_token_id
    )
    steps, result = _run(search)
    if result is not None:
        return result
    B, P = token_ids.shape
    ids = np.full((B, max_length), pad_token_id, dtype=np.int64)  # (B, S)
    keep = np.zeros((B, max_length), dtype=bool)  # (B, S)
    ids[:, :P], keep[:, :P] = token_ids, padding_mask
    for t, nxt, alive in steps:
        ids[:, t], keep[:, t] = nxt, alive
    end = P + len(steps)
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
    _check_cache_fits(backbone.config, token_ids.shape[0] * sampler.rows_per_prompt, max_length)
    return left_align(token_ids, padding_mask)


def _check_token_ids(name, ids, vocab_size):
    """Stop and pad ids must be rows of the embedding: ids the model can read and emit."""
    for i in ids:
        if not 0 <= check_int(name, i) < vocab_size:
            raise ArgumentError(
                f"{name}: {int(i)} is outside the model's vocabulary [0, {vocab_size})"
            )


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
    n = min(tokenizer.vocabulary_size(), vocab_size)
    holes = tokenizer.unused_ids[tokenizer.unused_ids < n]  # found once, when the tokenizer loaded
    return np.concatenate([holes, np.arange(n, vocab_size, dtype=np.int64)])


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


# HF's keyword names of the generation controls; a control not passed to generate (None) comes
# from the model's generation_config.json (lm.generation_config.extra), HF's own mechanism, else
# HF's default (off).
CONTROLS = (
    "max_new_tokens",
    "min_new_tokens",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "stop_strings",
    "num_return_sequences",
)


def resolve_controls(lm, controls):
    """{name: value} for every name of CONTROLS: the value passed, else generation_config.json's."""
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ArgumentError(
            f"generate: unknown argument(s) {unknown}; the controls are {list(CONTROLS)}"
        )
    extra = lm.generation_config.extra
    return {k: controls[k] if controls.get(k) is not None else extra.get(k) for k in CONTROLS}


def _stop_strings(lm, value):
    """A StopStrings for the texts of `stop_strings` (one string or a list), or None."""
    if value is None or (not isinstance(value, str) and not len(value)):
        return None
    texts = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(t, str) and t for t in texts):
        raise ArgumentError(f"stop_strings: expected non-empty strings, found {value!r}")
    if _tokenizer(lm) is None:
        raise ArgumentError("stop_strings: needs a tokenizer (the model has no preprocessor)")
    return StopStrings(Utf8Pieces(_tokenizer(lm))._token_bytes, texts)


def _setup(lm, inputs, max_length, stop_token_ids, sampler, controls):
    """Everything one generate / stream call needs, checked: a dict of the prompts (ids, mask,
    P, single), max_length, sampler, stop and pad ids, blocked ids, processor, stop strings."""
    c = resolve_controls(lm, controls)
    sampler = _sampler_of(lm, sampler)
    ids, mask, max_length, single = _prepare(lm, inputs, max_length)
    ids, mask = np.atleast_2d(np.asarray(ids)), np.atleast_2d(np.asarray(mask))
    if c["max_new_tokens"] is not None:  # HF: max_new_tokens wins over max_length
        max_length = ids.shape[-1] + check_int("max_new_tokens", c["max_new_tokens"], lo=0)
    stops = resolve_stop_ids(lm, stop_token_ids)
    processor = LogitsProcessor(
        repetition_penalty=1.0 if c["repetition_penalty"] is None else c["repetition_penalty"],
        no_repeat_ngram_size=c["no_repeat_ngram_size"] or 0,
        bad_words_ids=c["bad_words_ids"],
        min_new_tokens=c["min_new_tokens"] or 0,
        suppress_tokens=c["suppress_tokens"],
        eos_token_ids=stops,
    )
    n = check_int(
        "num_return_sequences",
        1 if c["num_return_sequences"] is None else c["num_return_sequences"],
        lo=1,
    )
    if n > 1:
        if isinstance(sampler, samplers.BeamSampler) and not sampler.is_greedy:
            if n > sampler.num_beams:
                raise ArgumentError(
                    f"num_return_sequences: {n} is more than num_beams {sampler.num_beams} (beam search returns its best beams)"
                )
            sampler = copy.copy(sampler)
            sampler.num_return_sequences = n
        elif isinstance(sampler, samplers._SeededSampler):  # HF: every prompt n times
            ids, mask = np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0)
        else:
            raise ArgumentError(
                f"num_return_sequences: {n} needs a random sampler (top_k, top_p, random) or beam search; "
                f"{type(sampler).__name__} gives one sequence per prompt"
            )
    return dict(
        ids=ids,
        mask=mask,
        single=single and n == 1,
        max_length=max_length,
        sampler=sampler,
        stops=stops,
        pad=_pad_id(lm, stops),
        blocked=_blocked_ids(lm, stops),
        processor=processor,
        stop_strings=_stop_strings(lm, c["stop_strings"]),
    )


def generate(
    lm,
    inputs,
    max_length=None,
    stop_token_ids="auto",
    strip_prompt=False,
    stream=False,
    sampler=None,
    **controls,
):
    """BloomCausalLM.generate: see its docstring. `sampler` defaults to lm.sampler; `controls`
    are HF's keywords (CONTROLS)."""
    if stream:
        return stream_text(
            lm, inputs, max_length, stop_token_ids, strip_prompt, sampler, **controls
        )
    g = _setup(lm, inputs, max_length, stop_token_ids, sampler, controls)
    P, single = g["ids"].shape[1], g["single"]
    out = generate_ids(
        lm.backbone,
        g["ids"],
        g["mask"],
        g["max_length"],
        g["sampler"],
        g["stops"],
        g["pad"],
        g["blocked"],
        g["processor"],
        g["stop_strings"],
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


# Sampler settings a generation_config.json may hold (HF's keys) -> the sampler option each sets.
# A sampler named by a string ("beam", "top_k", ...) takes them from the model's file, as HF's
# generate does; a Sampler object keeps its own. temperature is not taken: HF applies it only
# when sampling (do_sample), which minibloom's sampler names do not say.
SAMPLER_DEFAULTS = {
    "num_beams": "num_beams",
    "length_penalty": "length_penalty",
    "early_stopping": "early_stopping",
    "top_k": "k",
    "top_p": "p",
}


def sampler_defaults(lm):
    """{sampler option: value} from the model's generation_config.json (SAMPLER_DEFAULTS)."""
    extra = lm.generation_config.extra
    return {opt: extra[key] for key, opt in SAMPLER_DEFAULTS.items() if extra.get(key) is not None}


def sampler_for(lm, name, **options):
    """samplers.get(name) with the model's generation_config.json defaults under `options`
    (options given win); a bad value from the file is one error naming the file."""
    options = {k: v for k, v in options.items() if v is not None}
    if not isinstance(name, str):
        return samplers.get(name, **options)
    samplers.get(name, **options)  # the caller's own options alone: their errors name them
    try:
        return samplers.get(name, **{**sampler_defaults(lm), **options})
    except ArgumentError as e:
        raise ArgumentError(f"generation_config.json: {e}") from None


def _sampler_of(lm, sampler):
    if sampler is None:
        sampler = getattr(lm, "sampler", None)
    return sampler_for(lm, sampler)


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
    lm,
    inputs,
    max_length=None,
    stop_token_ids="auto",
    strip_prompt=False,
    sampler=None,
    stats=None,
    **controls,
):
    """Yield the text of one prompt piece by piece as tokens are generated.

    The pieces concatenate to `generate(lm, inputs, ...)` for the same arguments (the prompt first,
    unless strip_prompt). Beam search only knows its best beam at the end: it yields the whole
    completion as one piece. If `stats` is a dict it is filled with prompt_tokens, new_tokens,
    prefill_seconds (prompt forward + first token), decode_seconds (the rest), total_seconds.
    `controls`: HF's generation keywords, as generate (num_return_sequences must be 1).
    """
    if lm.preprocessor is None or not isinstance(inputs, str):
        raise ArgumentError("stream: needs a preprocessor and a single string prompt")
    g = _setup(lm, inputs, max_length, stop_token_ids, sampler, controls)
    if not g["single"]:
        raise ArgumentError("stream: streams one sequence; num_return_sequences must be 1")
    sampler, ids, mask, max_length = g["sampler"], g["ids"], g["mask"], g["max_length"]
    stops, pad, blocked = g["stops"], g["pad"], g["blocked"]
    g["processor"].check_vocabulary(lm.backbone.config.vocab_size)
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
    decoder = Decoder(lm.backbone, max_length, blocked, g["processor"], g["stop_strings"])
    search = sampler.search(decoder, ids, mask, max_length, stops, pad)
    while True:
        try:
            _, nxt, alive = next(search)
        except StopIteration as done:  # beam search knows its best beam only now: one piece
            if done.value is not None:
                P = ids.shape[1]
                new = done.value["token_ids"][0, P:][done.value["padding_mask"][0, P:]]
                stats.update(new_tokens=len(new), prefill_seconds=time.perf_counter() - start)
                piece = pieces.push(new)
                if piece:
                    yield piece
            break
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
    "Decoder",
    "generate",
    "generate_ids",
    "decode_steps",
    "stream_text",
    "left_align",
    "undecodable_ids",
    "Utf8Pieces",
]
