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

Leaves out: repetition penalties, min-length and other HF logits processors.

Shape legend: B batch rows, V vocabulary, K kept candidates.
"""

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


class Sampler:
    """Base class: holds the temperature; subclasses say how a token is chosen."""

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
        """logits: (B, V) float32 -> next token ids (B,) int64."""
        raise NotImplementedError(f"{type(self).__name__} runs its own search loop in generate.py")

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
    """

    def __init__(
        self,
        num_beams=5,
        return_all_beams=False,
        length_penalty=1.0,
        early_stopping=False,
        temperature=1.0,
    ):
        super().__init__(temperature)
        self.num_beams = check_int("num_beams", num_beams, lo=1)
        self.return_all_beams = bool(return_all_beams)
        self.length_penalty = check_float("length_penalty", length_penalty)
        early_stopping = check_choice("early_stopping", early_stopping, (True, False, "never"))
        self.early_stopping = early_stopping if early_stopping == "never" else bool(early_stopping)


class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al. 2022), keras-hub's formulation: among the k most likely tokens
    pick argmax of (1 - alpha) * p(token) - alpha * max cosine(h_token, h_previous)."""

    def __init__(self, k=5, alpha=0.6, temperature=1.0):
        super().__init__(temperature)
        self.k = check_int("k", k, lo=1)
        self.alpha = check_float("alpha", alpha, 0.0, 1.0)


_BY_NAME = {
    "greedy": GreedySampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "random": RandomSampler,
    "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
}


def get(identifier):
    """A sampler from a name ("greedy", "top_k", "top_p", "random", "beam", "contrastive", with
    keras-hub's default arguments), a Sampler (returned as is), or None (greedy: our default, see
    BloomCausalLM.generate)."""
    if identifier is None:
        return GreedySampler()
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ArgumentError(
        f"sampler must be one of {sorted(_BY_NAME)} or a Sampler object, found {identifier!r}"
    )
