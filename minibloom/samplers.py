"""Samplers: how the next token is chosen from the model's logits.

Names and arguments follow keras-hub (`keras_hub.samplers`), so `lm.compile(sampler="top_k")` or
`lm.compile(sampler=TopKSampler(k=10, seed=0))` read the same:

    GreedySampler()                                   argmax
    TopKSampler(k=5, seed=None)                       sample among the k most likely tokens
    TopPSampler(p=0.1, k=None, seed=None)             sample within the nucleus of mass p
    RandomSampler(seed=None)                          sample from the whole distribution
    BeamSampler(num_beams=5, return_all_beams=False,  beam search, HF semantics (see generate.py)
                length_penalty=1.0, early_stopping=False)
    ContrastiveSampler(k=5, alpha=0.6)                contrastive search (needs hidden states)

Every sampler takes `temperature` (default 1.0): logits are divided by it before the softmax, and
`temperature=0` means greedy. Token samplers (the first four) are pure functions of the logits and
a random generator: `choose(logits, rng)`. The generator comes from `make_rng()`, which a seeded
sampler builds from its seed on every `generate` call, so a seeded call gives the same text every
time it is run (keras-hub's SeedGenerator advances between calls instead). Beam and contrastive
search need the model inside their loop, so they only carry their settings here and run in
generate.py.

Distribution details: probabilities are computed in float64 from float32 logits; a sample is the
inverse CDF of one uniform draw over the kept tokens ranked best first. Top-p keeps the smallest
best-first prefix whose mass reaches p (a token is kept while the mass ranked before it is < p, as
in HF; keras-hub uses <=), always at least one token.

Numbers that are not ordinary (`checked_logits`, used by every sampler, beam and contrastive
search included, before anything else):

- NaN in a row of logits raises ArgumentError naming "logits", the row and the id: a model that
  outputs NaN is broken (weights or an overflow), and any token drawn from it would be arbitrary.
- +inf logits are certain tokens: the row becomes 0 at its +inf ids and -inf elsewhere (the limit
  of the softmax: the +inf ids share the probability; greedy takes the lowest of them).
- -inf is an impossible token (probability 0; generate.py masks undecodable ids this way). A row
  that is -inf everywhere has no possible token: ArgumentError.
- Temperature: `scaled` computes (logits - row max) / temperature in float64, so for any tiny
  temperature > 0 (1e-40, a float32 denormal, 5e-324) the best token keeps 0 and every other
  token goes to a huge negative number or -inf, never NaN: the distribution is exactly the
  T -> 0 limit, all mass on the argmax (shared only by exact ties). HF divides float32 logits
  first, which overflows to inf / NaN there. A non-finite temperature is refused.

Generation controls (HF's logits processors: repetition penalty, n-gram blocking, bad words,
min_new_tokens, suppressed ids) live in processors.py; every search applies them through
`decoder.process(scores)` before choosing (token samplers and contrastive search on the logits,
beam search on the log-softmax, as HF), and stops a row where `decoder.stopped(next_ids)` says its
text ends with a stop string.

Shape legend: B batch rows, V vocabulary, K kept candidates.
"""

import inspect

import numpy as np

from minibloom.arguments import check_choice, check_float, check_int
from minibloom.dispatch import fast_or_reference
from minibloom.errors import ArgumentError

# -----------------------------------------------------------------------------------------------
# the cuts: the k best entries of a row, and the nucleus (top-p) set
# -----------------------------------------------------------------------------------------------
# Order convention: candidates are sorted by value, descending; equal values by the lower index
# first (what a stable argsort of -x gives). kernels/sampling.py holds fast twins of both cuts (a
# one-pass heap instead of a full sort of 250,880 logits: ~1 ms instead of ~15 ms per row) with
# the same ids; `fast_or_reference` picks them.


def top_k_indices(x, k):
    """Indices of the k largest entries of each row of x (B, V), best first -> (B, K) int64."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k].astype(np.int64)


def nucleus_cut(sorted_probs, p):
    """How many of the best-first probabilities to keep: the smallest prefix whose mass is >= p.

    A token is kept when the mass of the tokens ranked before it is still < p (HF's rule; keras-hub
    uses <=, which differs only at exact ties with p). At least one token is always kept.
    """
    before = np.cumsum(sorted_probs) - sorted_probs  # mass ranked strictly before each token
    return max(1, int(np.count_nonzero(before < p)))


def top_p_set(x, p, k=None):
    """The nucleus of one row x (V,) of scaled logits, optionally among the k best only (then the
    probabilities are renormalised over those k first, as keras-hub's TopPSampler(k=...) does).

    Returns (ids (K,) int64 best first, probs (K,) float64 under the full or k-truncated softmax,
    not renormalised to the kept set).
    """
    order = np.argsort(-x, kind="stable")  # (V,) best first
    if k is not None:
        order = order[:k]
    z = np.exp(x.astype(np.float64) - x.max())  # unnormalised softmax, float64
    probs = z[order] / z[order].sum() if k is not None else z[order] / z.sum()
    n = nucleus_cut(probs, p)
    return order[:n].astype(np.int64), probs[:n]


def _check_logits(logits):
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.dtype != np.float32:
        raise ArgumentError(
            f"logits must be a (B, V) float32 array, found {type(logits).__name__} "
            f"{getattr(logits, 'shape', '')} {getattr(logits, 'dtype', '')}"
        )


def checked_logits(logits):
    """The (B, V) float32 logits a distribution may be built from: NaN refused, +inf made certain.

    Returns `logits` itself when every row has a finite maximum (the usual case: one max per row
    is all this costs), else a copy where each row holding +inf is 0 at its +inf ids and -inf
    elsewhere. Raises ArgumentError for a row holding NaN or a row that is -inf everywhere.
    """
    _check_logits(logits)
    if logits.shape[1] == 0:
        raise ArgumentError("logits: expected at least one entry per row, found V = 0")
    m = logits.max(axis=-1)  # NaN if the row holds NaN
    if np.isfinite(m).all():
        return logits
    bad = np.isnan(logits)
    if bad.any():
        b, i = (int(v[0]) for v in np.nonzero(bad))
        raise ArgumentError(
            f"logits: row {b} holds NaN (first at id {i}); the model's output is not a number (broken weights or "
            f"an overflow), so no token can be chosen"
        )
    dead = np.flatnonzero(m == -np.inf)
    if dead.size:
        raise ArgumentError(
            f"logits: row {int(dead[0])} is -inf everywhere, so no token is possible"
        )
    x = logits.copy()
    certain = m == np.inf  # (B,) rows with a certain token
    x[certain] = np.where(logits[certain] == np.inf, np.float32(0.0), np.float32(-np.inf))
    return x


def _draw(ids, probs, u):
    """Inverse CDF: the first of `ids` (best first) whose cumulative probability exceeds u in [0,1).

    probs need not sum to 1: they are renormalised over the kept ids here.
    """
    cdf = np.cumsum(probs)
    j = int(np.searchsorted(cdf / cdf[-1], u, side="right"))
    return int(ids[min(j, len(ids) - 1)])


NEG = np.float32(-1.0e9)  # HF's "impossible" beam score


def log_softmax(x):
    """(B, V) float32 -> log-probabilities, float32 (as torch's log_softmax on float32 logits)."""
    m = x.max(axis=-1, keepdims=True)
    shifted = x - m
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


class Sampler:
    """Base class: holds the temperature and the token-by-token loop (`search`); subclasses say
    how a token is chosen (`choose`), or run a loop of their own (beam and contrastive search)."""

    def __init__(self, temperature=1.0):
        self.temperature = check_float("temperature", temperature, lo=0.0)  # 0 means greedy

    @property
    def is_greedy(self) -> bool:
        """True when this sampler always picks the argmax (GreedySampler, or temperature 0)."""
        return self.temperature == 0.0

    def make_rng(self):
        """A fresh np.random.Generator for one generate call (None for deterministic samplers)."""
        return None

    def scaled(self, logits):
        """checked_logits(logits) / temperature, float32 (the temperature-0 case never gets here).

        At temperature 1 the logits are returned as they are (so beam scores equal HF's bit for bit);
        otherwise (logits - row max) / temperature is computed in float64: the softmax is the same,
        and a tiny temperature sends every token but the best to -inf instead of overflowing to NaN.
        """
        x = checked_logits(logits)
        if self.temperature == 1.0:
            return x
        with np.errstate(over="ignore"):  # -huge / tiny -> -inf is the intended limit
            return (
                (x.astype(np.float64) - x.max(axis=-1, keepdims=True)) / self.temperature
            ).astype(np.float32)

    def choose(self, logits, rng=None):
        """logits: (B, V) float32 -> next token ids (B,) int64. The base class only knows the
        greedy choice (temperature 0 means greedy for every sampler)."""
        if not self.is_greedy:
            raise NotImplementedError(f"{type(self).__name__} chooses inside its own search()")
        return np.argmax(checked_logits(logits), axis=-1).astype(np.int64)

    # --- the decoding loop ------------------------------------------------------------------
    # A search drives a `decoder` (generate.Decoder: the model and its KV cache), keras-hub's
    # `next` callback seam:
    #     decoder.prefill(ids, mask) -> logits (B, V)   the left-aligned prompts
    #     decoder.step(next_ids (R,)) -> logits (R, V)  one new column for every cache row
    #     decoder.hidden                                 (R, T, C) final hidden states of that call
    #     decoder.repeat(n), decoder.reorder(rows)       cache rows for beams / candidates
    #     decoder.fork(n)                                a copy with every row n times
    #     decoder.process(scores) -> scores              the call's logits processors
    #     decoder.stopped(next_ids) -> (R,) bool         rows whose text ends with a stop string

    rows_per_prompt = 1  # KV-cache rows one prompt needs (checked against memory first)

    def search(self, decoder, token_ids, padding_mask, max_length, stop_ids=(), pad_id=3):
        """Generate one position per step: yields (t, next_ids (B,), alive (B,) bool).

        token_ids, padding_mask: (B, P) left-aligned prompts. `alive` marks the rows that emitted
        next_ids[b] as a real token (rows that stopped earlier get pad_id and alive False). Ends
        after position max_length - 1 or when every row has emitted a stop id. A search may
        return a finished result instead of yielding steps (beam search returns its dict).
        """
        B, P = token_ids.shape
        if P >= max_length:
            return None
        stop = np.asarray(sorted(stop_ids), dtype=np.int64)
        logits = decoder.prefill(token_ids, padding_mask)
        rng = self.make_rng()
        alive = np.ones(B, dtype=bool)
        for t in range(P, max_length):
            nxt = np.where(alive, self.choose(decoder.process(logits), rng), pad_id).astype(
                np.int64
            )
            yield t, nxt, alive.copy()
            alive &= ~(np.isin(nxt, stop) | decoder.stopped(nxt))
            if t + 1 == max_length or not alive.any():
                return None
            logits = decoder.step(nxt)
        return None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class GreedySampler(Sampler):
    """Always the most likely token (ties: the lowest id, like torch.argmax). HF's default."""

    def __init__(self, temperature=1.0):
        super().__init__(temperature)

    @property
    def is_greedy(self):
        return True

    def choose(self, logits, rng=None):
        return np.argmax(checked_logits(logits), axis=-1).astype(np.int64)


class _SeededSampler(Sampler):
    """A sampler that draws random numbers: greedy at temperature 0, else `_choose_row` per row."""

    def __init__(self, seed=None, temperature=1.0):
        super().__init__(temperature)
        self.seed = None if seed is None else check_int("seed", seed, lo=0)

    def make_rng(self):
        return np.random.default_rng(self.seed)

    def choose(self, logits, rng=None):
        if self.is_greedy:
            return np.argmax(checked_logits(logits), axis=-1).astype(np.int64)
        if rng is None:
            raise ArgumentError(f"{type(self).__name__}.choose needs rng (from make_rng())")
        x = self.scaled(logits)
        u = rng.random(x.shape[0])  # one uniform per row, drawn before any row's work
        return self._choose_rows(x, u)

    def _choose_rows(self, x, u):
        """x (B, V) scaled logits, u (B,) uniforms -> ids (B,) int64; row by row by default."""
        return np.array([self._choose_row(x[b], u[b]) for b in range(x.shape[0])], dtype=np.int64)

    def _choose_row(self, x, u):
        raise NotImplementedError


class TopKSampler(_SeededSampler):
    """Sample among the k most likely tokens, renormalised (keras-hub's TopKSampler)."""

    def __init__(self, k=5, seed=None, temperature=1.0):
        super().__init__(seed, temperature)
        self.k = check_int("k", k, lo=1)

    def _choose_rows(self, x, u):
        ids = fast_or_reference(top_k_indices)(x, min(self.k, x.shape[1]))  # (B, K) best first
        top = np.take_along_axis(x, ids, axis=1).astype(np.float64)  # (B, K)
        probs = np.exp(
            top - top[:, :1]
        )  # softmax over the K kept (unnormalised; _draw renormalises)
        return np.array([_draw(ids[b], probs[b], u[b]) for b in range(x.shape[0])], dtype=np.int64)


class TopPSampler(_SeededSampler):
    """Sample within the nucleus: the fewest best tokens whose mass reaches p (optionally only
    among the k best first, as keras-hub's `k=` argument does)."""

    def __init__(self, p=0.1, k=None, seed=None, temperature=1.0):
        super().__init__(seed, temperature)
        self.p = check_float("p", p, 0.0, 1.0, lo_open=True)
        self.k = None if k is None else check_int("k", k, lo=1)

    def _choose_row(self, x, u):
        ids, probs = fast_or_reference(top_p_set)(
            x, self.p, None if self.k is None else min(self.k, x.shape[0])
        )
        return _draw(ids, probs, u)


class RandomSampler(_SeededSampler):
    """Sample from the whole (temperature-scaled) distribution."""

    def __init__(self, seed=None, temperature=1.0):
        super().__init__(seed, temperature)

    def _choose_row(self, x, u):
        probs = np.exp(x.astype(np.float64) - x.max())  # index order; no ranking needed
        return _draw(np.arange(x.shape[0]), probs, u)


class BeamSampler(Sampler):
    """Beam search with HF transformers' semantics (length penalty, finished-hypothesis
    bookkeeping, early stopping); see generate.py for why this differs from keras-hub.

    Args:
        num_beams: beams kept per prompt.
        return_all_beams: return every finished beam (best first) and its score, not just the best.
        length_penalty: a finished beam's score is sum(log p) / generated_length ** length_penalty.
        early_stopping: False (HF heuristic), True (stop once num_beams beams are finished) or
            "never" (canonical beam search stopping rule).
        num_return_sequences: None, or return the best n <= num_beams finished beams of every
            prompt as rows of a flat (B * n, P + N) result (HF's layout), scores (B * n,).
    """

    def __init__(
        self,
        num_beams=5,
        return_all_beams=False,
        length_penalty=1.0,
        early_stopping=False,
        temperature=1.0,
        num_return_sequences=None,
    ):
        super().__init__(temperature)
        self.num_beams = check_int("num_beams", num_beams, lo=1)
        self.num_return_sequences = (
            None
            if num_return_sequences is None
            else check_int("num_return_sequences", num_return_sequences, 1, self.num_beams)
        )
        self.return_all_beams = bool(return_all_beams)
        self.length_penalty = check_float("length_penalty", length_penalty)
        early_stopping = check_choice("early_stopping", early_stopping, (True, False, "never"))
        self.early_stopping = early_stopping if early_stopping == "never" else bool(early_stopping)

    @property
    def rows_per_prompt(self):
        return self.num_beams

    def search(self, decoder, token_ids, padding_mask, max_length, stop_ids=(), pad_id=3):
        """HF beam search. Returns (as the generator's return value; it yields no steps)
        {"token_ids": (B, R, P + N), "padding_mask", "scores": (B, R)} with R = num_beams if
        return_all_beams else 1 (then the beam axis is dropped: (B, P + N)).

        Per prompt it keeps `num_beams` running beams and a pool of `num_beams` finished ones. Each
        step takes the 2 * num_beams (more with several stop ids) best continuations over all
        beams x vocabulary by accumulated log-probability; those ending in a stop id (or reaching
        max_length, or whose text ends with a stop string) that rank among the first num_beams
        enter the pool with score
        sum(log p) / generated_length ** length_penalty; the best num_beams others keep running.
        All score arithmetic is float32 with -1e9 for "impossible", as in transformers, so ties
        and roundings match. At temperature 0 this is greedy search.
        """
        B, P = token_ids.shape
        if self.is_greedy or P >= max_length:
            return (
                yield from super().search(
                    decoder, token_ids, padding_mask, max_length, stop_ids, pad_id
                )
            )
        nb, lp, early = self.num_beams, self.length_penalty, self.early_stopping
        stop = np.asarray(sorted(stop_ids), dtype=np.int64)
        K = max(2, 1 + len(stop)) * nb  # candidates kept per step
        top_nb = np.arange(K) < nb  # (K,) only these may enter the finished pool
        top_k = fast_or_reference(top_k_indices)

        running = np.full((B, nb, max_length), pad_id, dtype=np.int64)  # (B, nb, S)
        running[:, :, :P] = token_ids[:, None, :]
        running_scores = np.zeros((B, nb), dtype=np.float32)
        running_scores[:, 1:] = (
            NEG  # only beam 0 is live at first: the beams do not start identical
        )
        finished = running.copy()  # (B, nb, S) the pool of finished hypotheses
        finished_scores = np.full((B, nb), NEG, dtype=np.float32)
        finished_len = np.zeros((B, nb), dtype=np.int64)  # generated tokens of each pooled one
        is_finished = np.zeros((B, nb), dtype=bool)
        may_improve = np.ones((B, 1), dtype=bool)  # HF's is_early_stop_heuristic_unsatisfied

        # prefill the B prompts once, then copy each row into its num_beams beams
        logits = np.repeat(decoder.prefill(token_ids, padding_mask), nb, axis=0)  # (B*nb, V)
        V = logits.shape[1]
        decoder.repeat(nb)
        cur = P
        while True:
            logp = decoder.process(log_softmax(self.scaled(logits))).reshape(B, nb, V)  # HF order
            logp = logp + running_scores[:, :, None]
            logp = logp.reshape(B, nb * V)  # (B, nb*V) accumulated score of every continuation
            idx = top_k(logp, K)  # (B, K) best first
            cand_scores = np.take_along_axis(logp, idx, axis=1)  # (B, K) float32
            src_beam, tok = idx // V, idx % V
            cand = np.take_along_axis(running, src_beam[:, :, None], axis=1)  # (B, K, S)
            cand[:, :, cur] = tok
            hits = np.isin(tok, stop) | (cur + 1 >= max_length)  # (B, K) this candidate ends here
            prompt_mask = np.repeat(padding_mask, K, axis=0)  # (B*K, P): each candidate's prompt
            hits |= decoder.candidates_stopped(
                cand.reshape(B * K, -1), cur + 1, prompt_mask
            ).reshape(B, K)  # ... or its text now ends with a stop string (HF: any criterion)

            # the best num_beams candidates that did not end keep running
            live_scores = cand_scores + hits.astype(np.float32) * NEG
            keep = top_k(live_scores, nb)  # (B, nb)
            running = np.take_along_axis(cand, keep[:, :, None], axis=1)
            running_scores = np.take_along_axis(live_scores, keep, axis=1)
            beam_rows = np.take_along_axis(src_beam, keep, axis=1) + np.arange(B)[:, None] * nb

            # candidates that ended enter the pool if they beat its worst member
            just_done = hits & top_nb[None, :]
            pool_scores = (cand_scores / np.float32((cur + 1 - P) ** lp)).astype(np.float32)
            pool_full = is_finished.all(axis=1, keepdims=True) & (early is True)
            pool_scores = pool_scores + pool_full.astype(np.float32) * NEG
            pool_scores = pool_scores + (~may_improve).astype(np.float32) * NEG
            pool_scores = pool_scores + (~just_done).astype(np.float32) * NEG
            merged_scores = np.concatenate([finished_scores, pool_scores], axis=1)  # (B, nb + K)
            best = top_k(merged_scores, nb)  # (B, nb)
            pool = np.concatenate([finished, cand], axis=1)  # (B, nb + K, S)
            finished = np.take_along_axis(pool, best[:, :, None], axis=1)
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
            best_len = max_length - P if early == "never" and lp > 0.0 else cur - P
            best_running = running_scores[:, :1] / np.float32(best_len**lp)
            worst_done = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)
            may_improve = may_improve & (best_running > worst_done).any(axis=-1, keepdims=True)
            open_beams = not (is_finished.all() and early is True)
            if not (may_improve.any() and open_beams and not hits.all()):
                break
            # follow the surviving beams: reorder the cache rows, then feed each beam's new token
            decoder.reorder(beam_rows.reshape(-1))
            logits = decoder.step(running[:, :, cur - 1].reshape(B * nb))

        flat = self.num_return_sequences
        R = flat or (nb if self.return_all_beams else 1)
        n = int(finished_len[:, :R].max())
        ids = finished[:, :R, : P + n]  # (B, R, P + N)
        keep_mask = np.zeros(ids.shape, dtype=bool)
        keep_mask[:, :, :P] = padding_mask[:, None, :]
        keep_mask[:, :, P:] = np.arange(n)[None, None, :] < finished_len[:, :R, None]
        result = {"token_ids": ids, "padding_mask": keep_mask, "scores": finished_scores[:, :R]}
        if flat:  # HF: the best n beams of prompt 0, then of prompt 1, ...
            return {k: v.reshape(B * R, *v.shape[2:]) for k, v in result.items()}
        if not self.return_all_beams:
            result = {k: v[:, 0] for k, v in result.items()}
        return result


class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al. 2022), keras-hub's formulation: among the k most likely tokens
    pick argmax of (1 - alpha) * p(token) - alpha * max cosine(h_token, h_previous)."""

    def __init__(self, k=5, alpha=0.6, temperature=1.0):
        super().__init__(temperature)
        self.k = check_int("k", k, lo=1)
        self.alpha = check_float("alpha", alpha, 0.0, 1.0)

    @property
    def rows_per_prompt(self):
        return self.k + 1  # the cache, and the k candidates' copy of it

    def search(self, decoder, token_ids, padding_mask, max_length, stop_ids=(), pad_id=3):
        """Contrastive search: the token loop of Sampler.search, where each step runs the k best
        candidates of every row through the model (B*K rows, `decoder.fork(K)`) and keeps the
        winner's cache row, logits and hidden state. A candidate of probability 0 (an impossible or
        blocked id, or any but the best at a tiny temperature) is never chosen, whatever its
        similarity; the best candidate always has probability > 0. At temperature 0: greedy."""
        B, P = token_ids.shape
        if self.is_greedy or P >= max_length:
            return (
                yield from super().search(
                    decoder, token_ids, padding_mask, max_length, stop_ids, pad_id
                )
            )
        stop = np.asarray(sorted(stop_ids), dtype=np.int64)
        logits = decoder.prefill(token_ids, padding_mask)
        past_hidden = np.zeros(
            (B, max_length, decoder.hidden.shape[-1]), dtype=np.float32
        )  # (B, S, C)
        past_hidden[:, :P] = decoder.hidden
        past_mask = np.ones((B, max_length), dtype=bool)  # (B, S) real positions
        past_mask[:, :P] = padding_mask
        alive = np.ones(B, dtype=bool)
        for t in range(P, max_length):
            x = self.scaled(decoder.process(logits))
            K = min(self.k, x.shape[1])
            cand = fast_or_reference(top_k_indices)(x, K)  # (B, K) best first
            m = x.max(-1, keepdims=True).astype(np.float64)
            logz = np.log(np.exp(x.astype(np.float64) - m).sum(-1, keepdims=True)) + m
            probs = np.exp(np.take_along_axis(x, cand, axis=1).astype(np.float64) - logz)  # (B, K)
            candidates = decoder.fork(K)  # row b*K + j is candidate j of row b
            cand_logits = candidates.step(cand.reshape(B * K))  # (B*K, V)
            h = candidates.hidden[:, 0].reshape(B, K, -1)  # (B, K, C)
            # cosine similarity of each candidate with every previous real position, max over them
            hn = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
            past = past_hidden[:, :t]  # (B, t, C)
            pn = past / np.maximum(np.linalg.norm(past, axis=-1, keepdims=True), 1e-12)
            sim = np.einsum("bkc,bsc->bks", hn, pn)  # (B, K, t)
            sim = np.where(past_mask[:, None, :t], sim, -np.inf).max(axis=-1)  # (B, K)
            score = np.where(probs > 0.0, (1.0 - self.alpha) * probs - self.alpha * sim, -np.inf)
            j = np.argmax(score, axis=-1)  # (B,)
            rows = np.arange(B) * K + j
            nxt = np.where(alive, cand[np.arange(B), j], pad_id).astype(np.int64)
            yield t, nxt, alive.copy()
            alive &= ~(np.isin(nxt, stop) | decoder.stopped(nxt))
            if t + 1 == max_length or not alive.any():
                return None
            candidates.reorder(rows)  # the winners' cache rows become the cache
            decoder.adopt(candidates)
            logits, past_hidden[:, t] = cand_logits[rows], h[np.arange(B), j]
        return None


_BY_NAME = {
    "greedy": GreedySampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "random": RandomSampler,
    "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
}


NAMES = tuple(_BY_NAME)  # what `compile(sampler=...)` and `generate --sampler` accept


def get(identifier, **options):
    """A sampler from a name ("greedy", "top_k", "top_p", "random", "beam", "contrastive", with
    keras-hub's default arguments), a Sampler (returned as is), or None (greedy: our default, see
    BloomCausalLM.generate). `options` (e.g. from the CLI: temperature, k, p, seed, num_beams,
    alpha) are passed to the named sampler's constructor; those it does not take are left out."""
    if identifier is None:
        return GreedySampler()
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        cls = _BY_NAME[identifier]
        accepted = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})
    raise ArgumentError(
        f"sampler must be one of {sorted(_BY_NAME)} or a Sampler object, found {identifier!r}"
    )
