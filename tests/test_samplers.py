"""Samplers on synthetic logits (no model): support sets, sampled distributions, seeds, twins.

The random samplers cannot match another library's RNG, so their correctness is checked
statistically: draws on fixed logits must follow the truncated, temperature-scaled softmax
(a chi-square goodness-of-fit test at significance 1e-3 with a fixed seed, so it is deterministic).
"""

import numpy as np
import pytest

from minibloom import samplers
from minibloom.errors import ArgumentError
from minibloom.kernels import sampling
from minibloom.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
)

N_DRAWS = 20000
Z_1E3 = 3.0902  # standard normal quantile for a one-sided 1e-3 test


def chi2_critical(df, z=Z_1E3):
    """Upper critical value of chi-square(df) by the Wilson-Hilferty cube approximation."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * np.sqrt(c)) ** 3


def draw_many(sampler, logits_row, n=N_DRAWS, batch=500):
    """Draw n samples for one fixed row, `batch` rows per choose() call."""
    rng = sampler.make_rng()
    x = np.repeat(logits_row[None, :], batch, axis=0)
    return np.concatenate([sampler.choose(x, rng) for _ in range(n // batch)])


def expected_probs(logits_row, temperature, keep):
    """The reference distribution: softmax(logits / T) restricted to `keep`, renormalised."""
    z = np.exp((logits_row.astype(np.float64) - logits_row.max()) / temperature)
    probs = np.zeros_like(z)
    probs[keep] = z[keep]
    return probs / probs.sum()


def assert_follows(draws, probs):
    """Chi-square goodness of fit of integer draws to probs; zero-probability ids never drawn."""
    counts = np.bincount(draws, minlength=len(probs))
    assert counts[probs == 0].sum() == 0, (
        f"drew outside the support: {np.flatnonzero(counts * (probs == 0))}"
    )
    support = probs > 0
    expected = probs[support] * len(draws)
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    if df == 0:
        return
    crit = chi2_critical(df)
    print(f"chi2 {stat:.2f} (df {df}, critical {crit:.2f})")
    assert stat < crit, (
        f"sampled frequencies do not follow the distribution: chi2 {stat:.1f} >= {crit:.1f} (df {df})"
    )


# Fixed logits: 40 tokens, shuffled so the ranking is not the index order.
LOGITS = np.random.default_rng(7).permutation(np.linspace(-4.0, 3.0, 40)).astype(np.float32)
RANKED = np.argsort(-LOGITS, kind="stable")


# --- greedy ---------------------------------------------------------------------------------


def test_greedy_picks_the_one_hot_token():
    ids = np.array([5, 0, 39])
    logits = np.zeros((3, 40), dtype=np.float32)
    logits[np.arange(3), ids] = 1e9
    assert GreedySampler().choose(logits).tolist() == ids.tolist()


def test_greedy_ties_go_to_the_lowest_id():
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, [3, 7]] = 2.0
    assert GreedySampler().choose(logits).tolist() == [3]


@pytest.mark.parametrize(
    "sampler",
    [
        TopKSampler(k=5, temperature=0),
        TopPSampler(p=0.9, temperature=0),
        RandomSampler(temperature=0),
    ],
)
def test_temperature_zero_is_greedy(sampler):
    logits = np.tile(LOGITS, (4, 1))
    assert sampler.choose(logits, sampler.make_rng()).tolist() == [int(RANKED[0])] * 4


# --- support sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_support_is_exactly_the_k_best(k):
    draws = draw_many(TopKSampler(k=k, seed=1), LOGITS, n=4000)
    assert set(draws.tolist()) == set(RANKED[:k].tolist())


@pytest.mark.parametrize(
    "p, n_kept",
    [(0.3, 1), (0.45, 2), (0.65, 2), (0.75, 3), (0.95, 4), (1.0, 4)],
)
def test_top_p_support_is_the_smallest_prefix_reaching_p(p, n_kept):
    # probabilities 0.4, 0.3, 0.2, 0.1 at shuffled ids: the prefix masses are 0.4, 0.7, 0.9, 1.0
    ids = np.array([2, 0, 3, 1])
    logits = np.full(4, -np.inf, dtype=np.float32)
    logits[ids] = np.log([0.4, 0.3, 0.2, 0.1]).astype(np.float32)
    kept, probs = samplers.top_p_set(logits, p)
    assert kept.tolist() == ids[:n_kept].tolist()
    np.testing.assert_allclose(probs, [0.4, 0.3, 0.2, 0.1][:n_kept], rtol=1e-6)
    draws = draw_many(TopPSampler(p=p, seed=3), logits, n=2000)
    assert set(draws.tolist()) == set(ids[:n_kept].tolist())


def test_top_p_with_k_cuts_to_k_first_and_renormalises():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32))
    # over the 2 best the probabilities are 4/7, 3/7: p=0.5 keeps one, p=0.6 keeps both
    assert samplers.top_p_set(logits, 0.5, k=2)[0].tolist() == [0]
    kept, probs = samplers.top_p_set(logits, 0.6, k=2)
    assert kept.tolist() == [0, 1]
    np.testing.assert_allclose(probs, [4 / 7, 3 / 7], rtol=1e-6)


# --- sampled distributions ------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_random_sampler_follows_the_tempered_softmax(temperature):
    draws = draw_many(RandomSampler(seed=11, temperature=temperature), LOGITS)
    assert_follows(draws, expected_probs(LOGITS, temperature, np.arange(40)))


@pytest.mark.parametrize("k, temperature", [(5, 1.0), (10, 0.7), (20, 1.5)])
def test_top_k_sampler_follows_the_truncated_softmax(k, temperature):
    draws = draw_many(TopKSampler(k=k, seed=12, temperature=temperature), LOGITS)
    assert_follows(draws, expected_probs(LOGITS, temperature, RANKED[:k]))


@pytest.mark.parametrize("p, temperature", [(0.5, 1.0), (0.9, 0.8), (0.8, 2.0)])
def test_top_p_sampler_follows_the_nucleus(p, temperature):
    z = np.exp((LOGITS[RANKED].astype(np.float64) - LOGITS.max()) / temperature)
    mass_before = np.cumsum(z / z.sum()) - z / z.sum()
    keep = RANKED[mass_before < p]
    draws = draw_many(TopPSampler(p=p, seed=13, temperature=temperature), LOGITS)
    assert_follows(draws, expected_probs(LOGITS, temperature, keep))


def test_the_statistical_test_rejects_a_wrong_distribution():
    # Sanity check of the checker itself: draws at temperature 1 do not pass for temperature 0.8.
    draws = draw_many(RandomSampler(seed=11), LOGITS)
    with pytest.raises(AssertionError):
        assert_follows(draws, expected_probs(LOGITS, 0.8, np.arange(40)))


# --- seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s: TopKSampler(k=10, seed=s),
        lambda s: TopPSampler(p=0.9, seed=s),
        lambda s: RandomSampler(seed=s),
    ],
)
def test_seeded_samplers_repeat_and_seeds_differ(make):
    a = draw_many(make(5), LOGITS, n=1000)
    b = draw_many(make(5), LOGITS, n=1000)
    c = draw_many(make(6), LOGITS, n=1000)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


# --- fast twins (kernels/sampling.py) == the references in samplers.py -----------------------


def _both(fn_name, *args):
    from minibloom import samplers

    return getattr(sampling, fn_name)(*args), getattr(samplers, fn_name)(*args)


@pytest.mark.parametrize("k", [1, 5, 64, 300])
def test_top_k_indices_fast_equals_reference(k):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2000)).astype(np.float32)
    x[1] = np.round(x[1])  # many ties: order must fall back to the lower index
    x[2, :50] = -np.inf
    fast, plain = _both("top_k_indices", x, k)
    assert fast.tolist() == plain.tolist()


def test_top_k_indices_over_a_bloom_sized_row():
    x = np.random.default_rng(1).standard_normal((2, 250880)).astype(np.float32)
    fast, plain = _both("top_k_indices", x, 50)
    assert fast.tolist() == plain.tolist()


@pytest.mark.parametrize("p, k", [(0.1, None), (0.9, None), (0.999, None), (1.0, None), (0.5, 40)])
def test_top_p_set_fast_equals_reference(p, k):
    # a peaked row (small nucleus) and a flat one (the window has to widen several times)
    for scale in (4.0, 0.3):
        x = (scale * np.random.default_rng(2).standard_normal(5000)).astype(np.float32)
        (fi, fp), (pi, pp) = _both("top_p_set", x, p, k)
        assert fi.tolist() == pi.tolist()
        np.testing.assert_array_equal(fp, pp)


def test_sampler_draws_equal_with_and_without_numba(monkeypatch):
    x = np.tile(LOGITS, (8, 1))
    for make in (lambda: TopKSampler(k=6, seed=4), lambda: TopPSampler(p=0.7, seed=4)):
        monkeypatch.setenv("MINIBLOOM_NUMBA", "1")
        fast = make().choose(x, make().make_rng())
        monkeypatch.setenv("MINIBLOOM_NUMBA", "0")
        plain = make().choose(x, make().make_rng())
        assert fast.tolist() == plain.tolist()


# --- arguments and names --------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, word",
    [
        (lambda: TopKSampler(k=0), "k"),
        (lambda: TopKSampler(k=-3), "k"),
        (lambda: TopPSampler(p=0.0), "p"),
        (lambda: TopPSampler(p=1.5), "p"),
        (lambda: TopPSampler(p=0.5, k=0), "k"),
        (lambda: RandomSampler(temperature=-1.0), "temperature"),
        (lambda: GreedySampler(temperature=-0.1), "temperature"),
        (lambda: BeamSampler(num_beams=0), "num_beams"),
        (lambda: BeamSampler(early_stopping="sometimes"), "early_stopping"),
        (lambda: ContrastiveSampler(alpha=1.5), "alpha"),
        (lambda: RandomSampler(seed=-1), "seed"),
        (lambda: RandomSampler(seed=1.5), "seed"),
        (lambda: TopKSampler(temperature=float("nan")), "temperature"),
        (lambda: BeamSampler(length_penalty=float("inf")), "length_penalty"),
        (lambda: ContrastiveSampler(k=True), "k"),
    ],
)
def test_bad_arguments_name_the_argument(build, word):
    with pytest.raises(ArgumentError, match=rf"^{word}: expected "):
        build()


def test_get_by_name_object_and_none():
    assert isinstance(samplers.get("greedy"), GreedySampler)
    assert samplers.get("top_k").k == 5
    assert samplers.get("top_p").p == 0.1
    assert isinstance(samplers.get("random"), RandomSampler)
    assert samplers.get("beam").num_beams == 5
    assert samplers.get("contrastive").alpha == 0.6
    s = TopKSampler(k=9)
    assert samplers.get(s) is s
    assert isinstance(samplers.get(None), GreedySampler)
    with pytest.raises(ArgumentError, match="sampler must be one of"):
        samplers.get("nucleus")


def test_choose_checks_logits_dtype():
    with pytest.raises(ArgumentError, match="logits"):
        GreedySampler().choose(np.zeros((1, 4), dtype=np.float64))
