"""Reliability of generation inputs: any padding layout, and the stop / pad ids of a model directory.

- Padding (issue 10, finding 3): a prompt batch padded on the right (as keras-hub packs it), on
  the left, with pads in the middle, or mixed, is continued row by row from each row's own real
  tokens: every row equals that row generated alone, for greedy, beam and contrastive search;
  seeded samplers give the same tokens whatever the layout. The pad positions hold random ids,
  so nothing may read them.
- Stop / pad ids (finding 5): a model directory saved by transformers 5 without tokenizer.json
  has "pad_token_id": null and its eos ids in generation_config.json; `generate` stops at them
  ("auto") and pads finished rows with the first eos id, as transformers does.
- Memory: `stream` checks the KV-cache size before it allocates, as `generate` does.

The model is a tiny random BLOOM with large weights (std 0.4 instead of 0.02), so its greedy
choice changes with the input and a row continued from a pad position would differ.
"""

import json

import numpy as np
import pytest
from conftest import requires_transformers

from minibloom import memory
from minibloom.causal_lm import BloomCausalLM
from minibloom.config import GenerationConfig
from minibloom.errors import ArgumentError
from minibloom.generate import generate_ids, left_align
from minibloom.model import BloomBackbone
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
)
from minibloom.tokenizer import SPECIAL_TOKENS, BloomTokenizer

V = 48
NEW = 9  # new tokens per row
LENGTHS = (3, 6, 4, 1)  # real prompt tokens per row
P = 7  # prompt columns: every row has at least one pad


def tiny_backbone(vocab_size=V, seed=0, scale=0.4):
    backbone = BloomBackbone(
        vocabulary_size=vocab_size, num_layers=2, num_heads=2, hidden_dim=16, seed=seed
    )
    rng = np.random.default_rng(seed + 100)
    for w in backbone.params.values():
        if w.ndim == 2:  # embeddings and linear weights
            w[...] = rng.standard_normal(w.shape).astype(np.float32) * np.float32(scale)
    return backbone


def tiny_tokenizer(n_tokens=V, holes=()):
    """Specials 0-3, then single byte-level characters; `holes` are ids left without a token."""
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz\u0120ABCDEFGHIJKLMNOPQRSTUVWXYZ"][
        : n_tokens - 4
    ]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: i + 4 for i, c in enumerate(chars) if i + 4 not in holes})
    return BloomTokenizer(vocab, [])


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(4, V, size=n) for n in LENGTHS]


def pack(prompts, layout, rng):
    """(B, P) ids and mask with each row's real tokens placed by `layout`; pads hold random ids."""
    ids = rng.integers(0, V, size=(len(prompts), P))
    mask = np.zeros((len(prompts), P), dtype=bool)
    for b, row in enumerate(prompts):
        kind = layout if layout != "mixed" else ("right", "left", "holes", "right")[b % 4]
        n = len(row)
        if kind == "left":
            cols = np.arange(P - n, P)
        elif kind == "right":
            cols = np.arange(n)
        else:  # holes: real tokens at random increasing columns
            cols = np.sort(rng.choice(P, size=n, replace=False))
        ids[b, cols], mask[b, cols] = row, True
    return ids, mask


def new_tokens(out, width):
    """The real generated tokens of each row (after the `width` prompt columns)."""
    return [
        row[width:][keep[width:]].tolist()
        for row, keep in zip(out["token_ids"], out["padding_mask"])
    ]


DETERMINISTIC = [
    pytest.param(lambda: GreedySampler(), id="greedy"),
    pytest.param(lambda: BeamSampler(num_beams=2), id="beam2"),
    pytest.param(lambda: BeamSampler(num_beams=3, length_penalty=0.5), id="beam3"),
    pytest.param(lambda: ContrastiveSampler(k=3, alpha=0.6), id="contrastive"),
]
SEEDED = [
    pytest.param(lambda: TopKSampler(k=5, seed=3), id="top_k"),
    pytest.param(lambda: TopPSampler(p=0.9, seed=3), id="top_p"),
    pytest.param(lambda: RandomSampler(seed=3, temperature=1.3), id="random"),
]
LAYOUTS = ["left", "right", "holes", "mixed"]


def run(backbone, ids, mask, max_length, sampler, path, stops=(2,)):
    """Generate through one of the entry points: generate_ids, or lm.generate on a token dict
    without / with a preprocessor (the latter also masks undecodable ids: none here)."""
    if path == "generate_ids":
        return generate_ids(backbone, ids, mask, max_length, sampler, stops, 3)
    lm = BloomCausalLM(
        backbone, BloomCausalLMPreprocessor(tiny_tokenizer()) if path == "preprocessor" else None
    )
    lm.sampler = sampler
    return lm.generate(
        {"token_ids": ids, "padding_mask": mask}, max_length=max_length, stop_token_ids=stops
    )


def alone(backbone, row, sampler, path):
    ids = np.asarray(row)[None, :]
    return new_tokens(
        run(backbone, ids, np.ones(ids.shape, bool), len(row) + NEW, sampler, path), len(row)
    )[0]


def test_the_model_continues_differently_from_a_pad_position(backbone, prompts):
    # the property the padding tests rely on: the tiny model's greedy choice depends on the input
    firsts = {tuple(alone(backbone, row, GreedySampler(), "generate_ids")[:2]) for row in prompts}
    assert len(firsts) == len(prompts)


@pytest.mark.parametrize("path", ["generate_ids", "no_preprocessor", "preprocessor"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("make", DETERMINISTIC)
def test_every_row_equals_the_row_alone_whatever_the_padding(backbone, prompts, make, layout, path):
    ids, mask = pack(prompts, layout, np.random.default_rng(9))
    out = run(backbone, ids, mask, P + NEW, make(), path)
    assert new_tokens(out, P) == [alone(backbone, row, make(), path) for row in prompts]
    # the returned prompt columns are the left-aligned prompts: pads first, real tokens in order
    for b, row in enumerate(prompts):
        assert out["padding_mask"][b, :P].tolist() == [False] * (P - len(row)) + [True] * len(row)
        assert out["token_ids"][b, P - len(row) : P].tolist() == row.tolist()


@pytest.mark.parametrize("path", ["generate_ids", "preprocessor"])
@pytest.mark.parametrize("make", SEEDED)
def test_seeded_samplers_give_the_same_tokens_whatever_the_padding(backbone, prompts, make, path):
    results = {}
    for layout in LAYOUTS:
        ids, mask = pack(prompts, layout, np.random.default_rng(len(layout)))
        results[layout] = new_tokens(run(backbone, ids, mask, P + NEW, make(), path, stops=()), P)
    assert all(r == results["left"] for r in results.values()), results
    # one right-padded row equals the same row alone (the random draws are then the same too)
    row = prompts[1]
    ids, mask = pack([row], "right", np.random.default_rng(0))
    got = new_tokens(run(backbone, ids, mask, P + NEW, make(), path, stops=()), P)[0]
    solo = run(
        backbone, row[None, :], np.ones((1, len(row)), bool), len(row) + NEW, make(), path, stops=()
    )
    assert got == new_tokens(solo, len(row))[0]


def test_right_padding_was_the_bug(backbone, prompts):
    # Without the alignment, a right-padded row is continued from its last column (a pad): the
    # first new token then differs from the row alone. This keeps the tests above meaningful.
    from minibloom.generate import decode_steps

    ids, mask = pack(prompts, "right", np.random.default_rng(9))
    nxt = next(decode_steps(backbone, ids, mask, P + NEW, GreedySampler()))[1]
    logits = backbone.logits(backbone.forward(ids, mask).hidden)[
        :, -1
    ]  # the last column, as before the fix
    assert nxt.tolist() != np.argmax(logits, axis=-1).tolist()
    assert nxt.tolist() == [
        alone(backbone, row, GreedySampler(), "generate_ids")[0] for row in prompts
    ]


def test_left_align_keeps_left_padding_and_token_order():
    ids = np.array([[7, 8, 9, 0], [1, 0, 2, 3], [4, 5, 6, 7]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)
    got_ids, got_mask = left_align(ids, mask)
    assert got_mask.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
    assert got_ids[got_mask].tolist() == ids[mask].tolist()
    again = left_align(got_ids, got_mask)
    assert again[0].tolist() == got_ids.tolist() and again[1].tolist() == got_mask.tolist()


# --- stop and pad ids (finding 5) -----------------------------------------------------------------


def test_auto_stops_use_every_generation_config_eos_id_and_pad_falls_back_to_eos(backbone, prompts):
    free = [
        generate_ids(
            backbone, r[None, :], np.ones((1, len(r)), bool), len(r) + NEW, GreedySampler(), (), 3
        )["token_ids"][0, len(r) :].tolist()
        for r in prompts[:2]
    ]
    (i, a), (j, b) = (
        (2, free[0][2]),
        (1, free[1][1]),
    )  # each row's first emission of a token: two stop ids
    assert a not in free[0][:i] + free[1][: j + 1] and b not in free[1][:j] + free[0][: i + 1]
    backbone.config.pad_token_id = None  # as transformers 5 writes it (restored below)
    try:
        lm = BloomCausalLM(backbone, None, GenerationConfig(eos_token_id=(a, b), pad_token_id=None))
        ids, mask = pack(prompts[:2], "left", np.random.default_rng(1))
        out = lm.generate(
            {"token_ids": ids, "padding_mask": mask}, max_length=P + NEW
        )  # stop_token_ids="auto"
    finally:
        backbone.config.pad_token_id = 3
    assert new_tokens(out, P) == [free[0][: i + 1], free[1][: j + 1]]
    assert out["token_ids"].shape[1] == P + i + 1
    assert out["token_ids"][1, P + j + 1 :].tolist() == [a] * (
        i - j
    )  # the finished row is filled with the first eos id


@pytest.mark.parametrize(
    "gen, tokenizer, stops, pad",
    [
        (GenerationConfig(eos_token_id=(7, 9), pad_token_id=5), None, (7, 9), 5),
        (GenerationConfig(eos_token_id=(7,), pad_token_id=None), None, (7,), 7),
        (GenerationConfig(eos_token_id=(), pad_token_id=None), None, (), 0),
        (GenerationConfig(eos_token_id=(), pad_token_id=None), "tok", (2,), 3),
        (GenerationConfig(eos_token_id=(8,), pad_token_id=None), "tok", (8,), 3),
        (GenerationConfig(eos_token_id=(8,), pad_token_id=6), "tok", (8,), 6),
    ],
)
def test_stop_and_pad_resolution_follows_hf(backbone, gen, tokenizer, stops, pad):
    from minibloom.generate import _pad_id, resolve_stop_ids

    pre = None if tokenizer is None else BloomCausalLMPreprocessor(tiny_tokenizer())
    lm = BloomCausalLM(backbone, pre, gen)
    assert resolve_stop_ids(lm, "auto") == stops
    assert _pad_id(lm, stops) == pad
    assert resolve_stop_ids(lm, None) == () and resolve_stop_ids(lm, (4, 5)) == (4, 5)


@requires_transformers
def test_a_transformers_5_directory_without_tokenizer_generates_like_transformers(tmp_path):
    import torch
    from transformers import BloomConfig as HFBloomConfig
    from transformers import BloomForCausalLM

    torch.manual_seed(0)
    cfg = HFBloomConfig(
        vocab_size=V,
        hidden_size=16,
        n_layer=2,
        n_head=2,
        pad_token_id=None,
        eos_token_id=2,
        bos_token_id=1,
        initializer_range=0.4,
    )
    model = BloomForCausalLM(cfg).eval()
    ids = torch.tensor([[5, 9, 11, 20, 30], [3, 3, 40, 41, 42]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        free = model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_length=14,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    eos = [int(free[0, 7]), int(free[1, 9])]  # two stop ids that the rows reach
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = None
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pad_token_id"] is None and not (tmp_path / "tokenizer.json").exists()
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=attn, max_length=14, do_sample=False)
    assert ref.shape[1] < 14  # transformers stopped at the generation config's eos ids
    lm = BloomCausalLM.from_preset(str(tmp_path))
    assert lm.preprocessor is None
    out = lm.generate(
        {"token_ids": ids.numpy(), "padding_mask": attn.numpy().astype(bool)}, max_length=14
    )
    assert out["token_ids"].tolist() == ref.tolist()


# --- memory: stream checks the cache size like generate -------------------------------------------


@pytest.mark.parametrize(
    "sampler", [GreedySampler(), ContrastiveSampler(k=3), BeamSampler(num_beams=2)]
)
def test_stream_refuses_a_kv_cache_that_does_not_fit_before_any_output(
    backbone, monkeypatch, sampler
):
    lm = BloomCausalLM(backbone, BloomCausalLMPreprocessor(tiny_tokenizer()))
    lm.sampler = sampler
    assert "".join(lm.stream("abc", max_length=20))  # fits: streams
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1024)  # 1 KiB free
    pieces = lm.stream("abc", max_length=20)
    with pytest.raises(
        ArgumentError, match=r"^max_length 20: the KV cache for \d+ row\(s\) would need .* GiB"
    ):
        next(pieces)  # nothing is yielded (not even the prompt) before the check
    with pytest.raises(ArgumentError, match=r"^max_length 20: the KV cache"):
        lm.generate("abc", max_length=20)


def test_a_kv_cache_made_directly_is_checked_before_allocating(monkeypatch):
    from minibloom.kvcache import KVCache

    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10 * 2**20)  # 10 MiB free
    KVCache(2, 1, 2, 64, 8)  # 16 KiB: fine
    with pytest.raises(
        ArgumentError, match=r"^KVCache of shape \(2, 1, 2, 1000000, 8\) .* would need .* GiB"
    ):
        KVCache(2, 1, 2, 10**6, 8)


def test_an_empty_prompt_batch_is_an_argument_error(backbone):
    with pytest.raises(ArgumentError, match=r"^token_ids: expected at least one prompt"):
        generate_ids(backbone, np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3), bool), 8)


@pytest.mark.parametrize(
    "stops, pad, message",
    [
        ((), V, rf"^pad_token_id: {V} is outside the model's vocabulary \[0, {V}\)"),
        ((), -1, r"^pad_token_id: -1 is outside"),
        ((), None, r"^pad_token_id: expected an integer, found None"),
        ((2, 1.5), 3, r"^stop_token_ids: expected an integer, found 1.5"),
    ],
)
def test_bad_stop_and_pad_ids_are_refused_before_anything_runs(backbone, stops, pad, message):
    with pytest.raises(ArgumentError, match=message):
        generate_ids(
            backbone, np.array([[5, 6]]), np.ones((1, 2), bool), 8, GreedySampler(), stops, pad
        )
