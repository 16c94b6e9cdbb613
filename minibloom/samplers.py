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

Leaves out: repetition penalties, min-length and other HF logits processors.

Shape legend: B batch rows, V vocabulary, K kept candidates.
"""

import numpy as np

from minibloom.errors import ArgumentError
from minibloom.kernels.sampling import top_k_indices, top_p_set


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ArgumentError(f"temperature must be a number >= 0 (0 means greedy), found {temperature!r}")
    return float(temperature)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ArgumentError(f"{name} must be a positive integer, found {value!r}")
    return int(value)


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ArgumentError(f"seed must be None or an integer >= 0, found {seed!r}")
    return seed


def _check_logits(logits):
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.dtype != np.float32:
        raise ArgumentError(
            f"logits must be a (B, V) float32 array, found {type(logits).__name__} "
            f"{getattr(logits, 'shape', '')} {getattr(logits, 'dtype', '')}"
        )


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
        self.temperature = _check_temperature(temperature)

    @property
    def is_greedy(self) -> bool:
        """True when this sampler always picks the argmax (GreedySampler, or temperature 0)."""
        return self.temperature == 0.0

    def make_rng(self):
        """A fresh np.random.Generator for one generate call (None for deterministic samplers)."""
        return None

    def scaled(self, logits):
        """logits / temperature, float32 (the temperature-0 case never gets here)."""
        return logits if self.temperature == 1.0 else (logits / np.float32(self.temperature)).astype(np.float32)

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
        _check_logits(logits)
        return np.argmax(logits, axis=-1).astype(np.int64)


class _SeededSampler(Sampler):
    """A sampler that draws random numbers: greedy at temperature 0, else `_choose_row` per row."""

    def __init__(self, seed=None, temperature=1.0):
        super().__init__(temperature)
        self.seed = _check_seed(seed)

    def make_rng(self):
        return np.random.default_rng(self.seed)

    def choose(self, logits, rng=None):
        _check_logits(logits)
        if self.is_greedy:
            return np.argmax(logits, axis=-1).astype(np.int64)
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
        self.k = _check_positive_int("k", k)

    def _choose_rows(self, x, u):
        ids = top_k_indices(x, min(self.k, x.shape[1]))  # (B, K) best first, all rows in one pass
        top = np.take_along_axis(x, ids, axis=1).astype(np.float64)  # (B, K)
        probs = np.exp(top - top[:, :1])  # softmax over the K kept (unnormalised; _draw renormalises)
        return np.array([_draw(ids[b], probs[b], u[b]) for b in range(x.shape[0])], dtype=np.int64)


class TopPSampler(_SeededSampler):
    """Sample within the nucleus: the fewest best tokens whose mass reaches p (optionally only
    among the k best first, as keras-hub's `k=` argument does)."""

    def __init__(self, p=0.1, k=None, seed=None, temperature=1.0):
        super().__init__(seed, temperature)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ArgumentError(f"p must be a number in (0, 1], found {p!r}")
        self.p = float(p)
        self.k = None if k is None else _check_positive_int("k", k)

    def _choose_row(self, x, u):
        ids, probs = top_p_set(x, self.p, self.k)
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

    def __init__(self, num_beams=5, return_all_beams=False, length_penalty=1.0, early_stopping=False, temperature=1.0):
        super().__init__(temperature)
        self.num_beams = _check_positive_int("num_beams", num_beams)
        self.return_all_beams = bool(return_all_beams)
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
            raise ArgumentError(f"length_penalty must be a number, found {length_penalty!r}")
        self.length_penalty = float(length_penalty)
        if early_stopping not in (True, False, "never"):
            raise ArgumentError(f"early_stopping must be True, False or 'never', found {early_stopping!r}")
        self.early_stopping = early_stopping


class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al. 2022), keras-hub's formulation: among the k most likely tokens
    pick argmax of (1 - alpha) * p(token) - alpha * max cosine(h_token, h_previous)."""

    def __init__(self, k=5, alpha=0.6, temperature=1.0):
        super().__init__(temperature)
        self.k = _check_positive_int("k", k)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ArgumentError(f"alpha must be a number in [0, 1], found {alpha!r}")
        self.alpha = float(alpha)


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
    raise ArgumentError(f"sampler must be one of {sorted(_BY_NAME)} or a Sampler object, found {identifier!r}")
