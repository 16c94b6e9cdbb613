"""Reliability of the numbers generation chooses from (issue 10, "Numbers" and "Undecodable ids").

The rules (samplers.py `checked_logits` / `Sampler.scaled`, generate.py `_last_logits`), checked
for every sampler, table-driven:

- a tiny positive temperature (1e-40, 1e-30, float32 and float64 denormals) is the T -> 0 limit:
  the same tokens as greedy, never NaN;
- +inf logits are certain tokens; NaN logits raise one ArgumentError naming "logits"; a row that is
  -inf everywhere raises too; a non-finite temperature is refused;
- ids the tokenizer cannot decode (rows of the embedding past the tokenizer, or holes) are never
  generated when there is a tokenizer, even by a head that prefers them; token-only generation
  (no tokenizer) is unchanged and can produce them.
"""

import warnings

import numpy as np
import pytest
from test_reliability_padding import tiny_backbone, tiny_tokenizer

from minibloom.causal_lm import BloomCausalLM
from minibloom.errors import ArgumentError
from minibloom.generate import generate_ids, undecodable_ids
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
    checked_logits,
)

TINY = [
    1e-40,
    1e-30,
    float(np.float32(1e-42)),
    5e-324,
    np.float32(1e-45),
]  # the last: a float32 denormal object

TOKEN_SAMPLERS = {
    "greedy": lambda t: GreedySampler(temperature=t),
    "top_k": lambda t: TopKSampler(k=8, seed=1, temperature=t),
    "top_p": lambda t: TopPSampler(p=0.99, seed=1, temperature=t),
    "top_p_k": lambda t: TopPSampler(p=0.99, k=6, seed=1, temperature=t),
    "random": lambda t: RandomSampler(seed=1, temperature=t),
}
SEARCHES = {
    "beam2": lambda t: BeamSampler(num_beams=2, temperature=t),
    "beam3": lambda t: BeamSampler(num_beams=3, temperature=t, early_stopping=True),
    "contrastive": lambda t: ContrastiveSampler(k=4, alpha=0.6, temperature=t),
    "contrastive_alpha1": lambda t: ContrastiveSampler(
        k=4, alpha=1.0, temperature=t
    ),  # similarity only
}
ALL = {**TOKEN_SAMPLERS, **SEARCHES}


@pytest.fixture(autouse=True)
def no_numpy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", RuntimeWarning
        )  # an overflow or invalid value would show as one
        yield


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


def _prompts():
    ids = np.array([[5, 9, 11, 20], [3, 40, 41, 42], [7, 7, 8, 9]])
    return ids, np.array([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], bool)


def _rows(n=6, V=40, seed=0):
    return np.random.default_rng(seed).standard_normal((n, V)).astype(np.float32) * np.float32(3.0)


# --- tiny temperatures --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", TINY)
@pytest.mark.parametrize("name", TOKEN_SAMPLERS)
def test_tiny_temperature_chooses_the_argmax(name, temperature):
    sampler = TOKEN_SAMPLERS[name](temperature)
    assert not sampler.is_greedy or name == "greedy"
    x = _rows()
    x[2, 5] = x[2].max() + np.float32(1e-5)  # a near tie: still the exact argmax at T -> 0
    got = sampler.choose(x, sampler.make_rng())
    assert got.tolist() == np.argmax(x, axis=-1).tolist()
    scaled = sampler.scaled(x)
    assert not np.isnan(scaled).any() and (scaled[np.arange(len(x)), got] == 0).all()


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 5e-324])
@pytest.mark.parametrize("name", ALL)
def test_tiny_temperature_generates_the_greedy_tokens(backbone, name, temperature):
    ids, mask = _prompts()
    greedy = generate_ids(backbone, ids, mask, 14, GreedySampler(), (), 3)
    out = generate_ids(backbone, ids, mask, 14, ALL[name](temperature), (), 3)
    assert out["token_ids"].tolist() == greedy["token_ids"].tolist()


def test_a_small_but_ordinary_temperature_still_samples():
    # the tiny-temperature rule is the limit, not a threshold: T = 1 keeps the distribution wide
    sampler = RandomSampler(seed=0, temperature=1.0)
    x = np.zeros((200, 4), dtype=np.float32)
    assert len(set(sampler.choose(x, sampler.make_rng()).tolist())) == 4


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1e-30])
def test_a_temperature_that_is_not_a_finite_number_ge_0_is_refused(bad):
    for make in ALL.values():
        with pytest.raises(ArgumentError, match="^temperature: expected a finite number >= 0"):
            make(bad)


# --- +inf, NaN and all -inf logits --------------------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_SAMPLERS)
def test_plus_inf_logits_are_a_certain_token(name):
    sampler = TOKEN_SAMPLERS[name](1.0)
    x = _rows(n=50)
    x[:, 17] = np.inf
    x[:25, 3] = np.inf  # two certain ids in these rows: they share the probability
    got = sampler.choose(x, sampler.make_rng())
    assert (got[25:] == 17).all() and set(got[:25].tolist()) <= {3, 17}
    if name == "greedy":
        assert (got[:25] == 3).all()  # greedy: the lowest of the tied ids


def _poison(backbone, token, value):
    """A view of `backbone` whose logits hold `value` at id `token` (every row, every step)."""

    class Poisoned:
        config, params = backbone.config, backbone.params

        def forward(self, *a, **k):
            return backbone.forward(*a, **k)

        def logits(self, hidden):
            out = backbone.logits(hidden)
            out[..., token] = value
            return out

    return Poisoned()


@pytest.mark.parametrize("name", ALL)
def test_plus_inf_logits_make_every_search_emit_that_token(backbone, name):
    ids, mask = _prompts()
    out = generate_ids(_poison(backbone, 13, np.inf), ids, mask, 10, ALL[name](1.0), (), 3)
    assert (out["token_ids"][:, 4:] == 13).all()


@pytest.mark.parametrize("name", ALL)
def test_nan_logits_raise_one_error_naming_logits(backbone, name):
    ids, mask = _prompts()
    with pytest.raises(ArgumentError, match=r"^logits: row 0 holds NaN \(first at id 13\)"):
        generate_ids(_poison(backbone, 13, np.nan), ids, mask, 10, ALL[name](1.0), (), 3)
    if name in TOKEN_SAMPLERS:
        x = _rows()
        x[4, 2] = np.nan
        with pytest.raises(ArgumentError, match=r"^logits: row 4 holds NaN \(first at id 2\)"):
            TOKEN_SAMPLERS[name](0.7).choose(x, np.random.default_rng(0))


def test_a_row_without_any_possible_token_is_an_error():
    x = _rows()
    x[1] = -np.inf
    for make in TOKEN_SAMPLERS.values():
        with pytest.raises(ArgumentError, match=r"^logits: row 1 is -inf everywhere"):
            make(1.0).choose(x, np.random.default_rng(0))


def test_checked_logits_returns_ordinary_logits_unchanged():
    x = _rows()
    x[0, :5] = -np.inf  # impossible tokens are ordinary
    assert checked_logits(x) is x


# --- undecodable ids ---------------------------------------------------------------------------

V_BIG = 64  # embedding rows; the tokenizer has 48 ids, id 20 of them a hole
HOLE, PAST = 20, 50


@pytest.fixture(scope="module")
def prefers_undecodable():
    """A model whose head strongly prefers id PAST (no token) and then the hole HOLE."""
    bb = tiny_backbone(vocab_size=V_BIG, seed=1)
    u = np.random.default_rng(2).standard_normal(16).astype(np.float32)
    u /= np.linalg.norm(u)
    bb.params["ln_f.weight"][:] = 0.1
    bb.params["ln_f.bias"][:] = 3 * u
    bb.params["word_embeddings.weight"][PAST] = 5 * u
    bb.params["word_embeddings.weight"][HOLE] = 4.5 * u
    return bb


def test_undecodable_ids_are_the_holes_and_the_rows_past_the_tokenizer():
    tok = tiny_tokenizer(holes=(HOLE,))
    assert tok.vocabulary_size() == 48 and tok.id_to_token(HOLE) is None
    assert undecodable_ids(tok, V_BIG).tolist() == [HOLE] + list(range(48, V_BIG))
    assert undecodable_ids(tiny_tokenizer(), 48).tolist() == []


@pytest.mark.parametrize("name", ALL)
def test_undecodable_ids_are_never_generated_from_text(prefers_undecodable, name):
    bad = [HOLE] + list(range(48, V_BIG))
    ids = np.array([[5, 6, 7], [8, 9, 10]])
    sampler = ALL[name](1.0)
    bare = BloomCausalLM(prefers_undecodable, None)
    bare.sampler = sampler
    free = bare.generate({"token_ids": ids}, max_length=12, stop_token_ids=None)["token_ids"][:, 3:]
    assert np.isin(free, bad).any(), (
        "token-only generation should produce the preferred undecodable id"
    )
    lm = BloomCausalLM(
        prefers_undecodable, BloomCausalLMPreprocessor(tiny_tokenizer(holes=(HOLE,)))
    )
    lm.sampler = sampler
    out = lm.generate({"token_ids": ids}, max_length=12, stop_token_ids=None)
    assert out["token_ids"].shape == (2, 12) and not np.isin(out["token_ids"][:, 3:], bad).any()
    text = lm.generate("abc", max_length=12, stop_token_ids=None)
    assert (
        len(text) > len("abc")
        and "".join(lm.stream("abc", max_length=12, stop_token_ids=None)) == text
    )


def test_an_undecodable_stop_id_may_still_be_generated(prefers_undecodable):
    lm = BloomCausalLM(
        prefers_undecodable, BloomCausalLMPreprocessor(tiny_tokenizer(holes=(HOLE,)))
    )
    out = lm.generate({"token_ids": np.array([[5, 6, 7]])}, max_length=12, stop_token_ids=(PAST,))
    assert out["token_ids"][0].tolist() == [
        5,
        6,
        7,
        PAST,
    ]  # asked for: allowed, and it ends the row
