"""Logits processors: HF transformers' generation controls as plain NumPy, one function each.

Each function takes the scores of the next position (R, V) float32 and the sequences so far
(R, t) int64 (prompt columns first, left-aligned to width P, then the tokens generated so far;
finished rows hold the pad id) and returns new scores; none changes its input. They are HF's
classes of `transformers.generation.logits_process`, with the same arithmetic (float32):

    repetition_penalty(scores, ids, first, penalty)   RepetitionPenaltyLogitsProcessor
    no_repeat_ngram(scores, ids, n)                   NoRepeatNGramLogitsProcessor
    bad_words(scores, ids, bad_words_ids, eos_ids)    NoBadWordsLogitsProcessor
    min_new_tokens(scores, new_tokens, n, eos_ids)    MinNewTokensLengthLogitsProcessor
    suppress_tokens(scores, ids)                      SuppressTokensLogitsProcessor

`LogitsProcessor` holds the settings of one generate call and applies the active ones in HF's
order (`GenerationMixin._get_logits_processor`):

    1. repetition_penalty   2. no_repeat_ngram_size   3. bad_words_ids
    4. min_new_tokens       5. suppress_tokens
    then the sampler's own warpers (temperature, top-k, top-p: samplers.py)

Where they apply (generate.Decoder.process, the one hook every search calls): greedy, the
random samplers and contrastive search process the raw logits; beam search processes the
log-softmax of the logits, as HF does (so a repetition penalty multiplies log-probabilities).

Leaves out: sequence_bias, min_length, forced BOS/EOS, typical / epsilon / eta warpers,
encoder-side processors.

Shape legend: R rows (prompts, or prompts x beams), t positions so far, V vocabulary.
"""

import numpy as np

from minibloom.arguments import check_float, check_int
from minibloom.errors import ArgumentError

NEG_INF = np.float32(-np.inf)


def repetition_penalty(scores, ids, first, penalty):
    """Every id that occurs in a row's sequence (prompt included, left padding excluded: the
    columns before `first[r]`) gets its score divided by `penalty` if positive, multiplied if
    negative (HF, CTRL paper). first: (R,) column of each row's first real token."""
    out = scores.copy()
    p = np.float32(penalty)
    for r in range(ids.shape[0]):
        seen = np.unique(ids[r, first[r] :])
        seen = seen[seen < scores.shape[1]]
        s = scores[r, seen]
        out[r, seen] = np.where(s < 0, s * p, s / p)
    return out


def no_repeat_ngram(scores, ids, n):
    """Ban every token that would complete an n-gram already in the row's sequence (all
    columns, as HF): windows of n tokens whose first n - 1 equal the last n - 1 tokens ban their
    last token."""
    t = ids.shape[1]
    if t < n:
        return scores
    out = scores.copy()
    for r in range(ids.shape[0]):
        row = ids[r]
        prefix = row[t - n + 1 :]  # (n - 1,) the current suffix
        windows = np.lib.stride_tricks.sliding_window_view(row, n)  # (t - n + 1, n)
        hit = (windows[:, :-1] == prefix).all(axis=1)
        out[r, windows[hit, -1]] = NEG_INF
    return out


def bad_words(scores, ids, bad_words_ids, eos_ids=()):
    """Never complete a bad word: single-token entries are banned always; a longer entry bans its
    last token where the row's sequence ends with the entry's other tokens. Entries that are just
    an eos id are dropped (HF: stopping stays possible)."""
    out = scores.copy()
    for word in bad_words_ids:
        if len(word) == 1 and word[0] in eos_ids:
            continue
        *prefix, last = word
        if not prefix:
            out[:, last] = NEG_INF
            continue
        if len(prefix) > ids.shape[1]:
            continue
        match = (ids[:, ids.shape[1] - len(prefix) :] == np.asarray(prefix)).all(axis=1)
        out[match, last] = NEG_INF
    return out


def min_new_tokens(scores, new_tokens, n, eos_ids):
    """The eos ids are impossible (-inf) while fewer than n tokens were generated."""
    if new_tokens >= n or not len(eos_ids):
        return scores
    out = scores.copy()
    out[:, list(eos_ids)] = NEG_INF
    return out


def suppress_tokens(scores, ids):
    """The given ids are impossible (-inf) at every position."""
    out = scores.copy()
    out[:, list(ids)] = NEG_INF
    return out


def _id_list(name, ids):
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ArgumentError(f"{name}: expected a list of token ids, found {ids!r}")
    return [check_int(name, i, lo=0) for i in ids]


class LogitsProcessor:
    """The generation controls of one call, applied in HF's order by `__call__`.

    Args (HF's names and defaults, which disable each control):
        repetition_penalty: float > 0; 1.0 is off.
        no_repeat_ngram_size: int >= 0; 0 is off.
        bad_words_ids: list of lists of ids never completed.
        min_new_tokens: int >= 0: eos impossible before that many new tokens.
        suppress_tokens: list of ids never produced.
        eos_token_ids: the stop ids (min_new_tokens blocks them; bad_words keeps them possible).
    """

    def __init__(
        self,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        bad_words_ids=None,
        min_new_tokens=0,
        suppress_tokens=None,
        eos_token_ids=(),
    ):
        self.repetition_penalty = check_float(
            "repetition_penalty", repetition_penalty, lo=0.0, lo_open=True
        )
        self.no_repeat_ngram_size = check_int("no_repeat_ngram_size", no_repeat_ngram_size, lo=0)
        if bad_words_ids is not None and (
            isinstance(bad_words_ids, (str, bytes)) or not hasattr(bad_words_ids, "__iter__")
        ):
            raise ArgumentError(
                f"bad_words_ids: expected a list of lists of ids, found {bad_words_ids!r}"
            )
        self.bad_words_ids = [_id_list("bad_words_ids", w) for w in (bad_words_ids or ())]
        if any(not w for w in self.bad_words_ids):
            raise ArgumentError(
                "bad_words_ids: every entry needs at least one id, found an empty list"
            )
        self.min_new_tokens = check_int("min_new_tokens", min_new_tokens, lo=0)
        self.suppress_tokens = _id_list("suppress_tokens", suppress_tokens or ())
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)

    @property
    def active(self):
        """True when at least one control changes scores."""
        return bool(
            self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size
            or self.bad_words_ids
            or (self.min_new_tokens and self.eos_token_ids)
            or self.suppress_tokens
        )

    def check_vocabulary(self, vocab_size):
        """Every id named must be a row of the embedding."""
        named = [("suppress_tokens", i) for i in self.suppress_tokens]
        named += [("bad_words_ids", i) for w in self.bad_words_ids for i in w]
        for name, i in named:
            if i >= vocab_size:
                raise ArgumentError(
                    f"{name}: {i} is outside the model's vocabulary [0, {vocab_size})"
                )

    def __call__(self, scores, ids, prompt_width, first):
        """scores (R, V) float32, ids (R, t) the sequences so far, prompt_width P (the width the
        prompts were left-aligned to: new tokens = t - P), first (R,) first real column per row."""
        if self.repetition_penalty != 1.0:
            scores = repetition_penalty(scores, ids, first, self.repetition_penalty)
        if self.no_repeat_ngram_size:
            scores = no_repeat_ngram(scores, ids, self.no_repeat_ngram_size)
        if self.bad_words_ids:
            scores = bad_words(scores, ids, self.bad_words_ids, self.eos_token_ids)
        if self.min_new_tokens:
            scores = min_new_tokens(
                scores, ids.shape[1] - prompt_width, self.min_new_tokens, self.eos_token_ids
            )
        if self.suppress_tokens:
            scores = suppress_tokens(scores, self.suppress_tokens)
        return scores
