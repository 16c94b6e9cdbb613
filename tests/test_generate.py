"""Generation: golden parity with transformers `generate`, the KV cache, padding, stops, streaming.

The golden model (tests/golden/generate/model) is a tiny BLOOM briefly trained by
tools/golden_generate.py, so its greedy and beam outputs vary and stop on `</s>` now and then;
cases.json holds what transformers generated from it.
"""

import json

import numpy as np
import pytest
from conftest import assert_close, golden_path, requires_transformers

from minibloom.causal_lm import BloomCausalLM
from minibloom.errors import ArgumentError
from minibloom.generate import Utf8Pieces, generate_ids
from minibloom.kvcache import KVCache
from minibloom.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    TopKSampler,
    TopPSampler,
)

CACHE_ATOL = 1e-5  # cached vs recomputed logits (float32, tiny model)
PAD_ATOL = 1e-5  # left-padded row vs the same prompt alone
SCORE_ATOL = 1e-4  # beam sequences_scores vs HF (float32 sums of ~20 log-probs, / length**penalty)


@pytest.fixture(scope="module")
def golden():
    return json.loads(golden_path("generate/cases.json").read_text())


@pytest.fixture(scope="module")
def lm():
    return BloomCausalLM.from_preset(str(golden_path("generate/model")))


def _case_args(case):
    ids = np.array(case["token_ids"], dtype=np.int64)
    mask = np.array(case["padding_mask"], dtype=bool)
    stop = () if case["eos_token_id"] is None else (case["eos_token_id"],)
    return ids, mask, case["max_length"], stop


# --- golden parity ----------------------------------------------------------------------------


def test_golden_greedy_ids_equal_transformers(lm, golden):
    cases = [c for c in golden["cases"] if c["kind"] == "greedy"]
    assert len(cases) >= 10
    for case in cases:
        ids, mask, max_length, stop = _case_args(case)
        out = generate_ids(
            lm.backbone, ids, mask, max_length, GreedySampler(), stop, pad_token_id=3
        )
        assert out["token_ids"].tolist() == case["sequences"], (
            f"greedy {case['text']} eos={case['eos_token_id']}"
        )


def test_golden_beam_search_equals_transformers(lm, golden):
    cases = [c for c in golden["cases"] if c["kind"] == "beam"]
    assert len(cases) >= 8
    for case in cases:
        ids, mask, max_length, stop = _case_args(case)
        sampler = BeamSampler(
            case["num_beams"],
            return_all_beams=True,
            length_penalty=case["length_penalty"],
            early_stopping=case["early_stopping"],
        )
        out = generate_ids(lm.backbone, ids, mask, max_length, sampler, stop, pad_token_id=3)
        B, R, S = out["token_ids"].shape
        name = f"beam {case['text']} n={case['num_beams']} lp={case['length_penalty']} es={case['early_stopping']}"
        assert out["token_ids"].reshape(B * R, S).tolist() == case["sequences"], name
        assert_close(
            name + " scores", out["scores"].reshape(-1), case["sequences_scores"], atol=SCORE_ATOL
        )


def test_beam_best_only_is_the_first_of_all_beams(lm, golden):
    case = next(c for c in golden["cases"] if c["kind"] == "beam")
    ids, mask, max_length, stop = _case_args(case)
    out = generate_ids(
        lm.backbone,
        ids,
        mask,
        max_length,
        BeamSampler(
            case["num_beams"],
            length_penalty=case["length_penalty"],
            early_stopping=case["early_stopping"],
        ),
        stop,
        3,
    )
    best = np.array(case["sequences"][0])
    best = best[
        : len(best)
        if 3 not in best[ids.shape[1] :]
        else ids.shape[1] + list(best[ids.shape[1] :]).index(3)
    ]
    assert (
        out["token_ids"].shape == (1, len(best)) and out["token_ids"][0].tolist() == best.tolist()
    )


# --- KV cache and padding ---------------------------------------------------------------------


def test_cached_logits_equal_a_full_recompute(lm):
    bb = lm.backbone
    rng = np.random.default_rng(0)
    ids = rng.integers(4, bb.config.vocab_size, size=(2, 14))
    mask = np.ones(ids.shape, dtype=bool)
    mask[1, :3] = False  # a left-padded row
    full = bb.logits(bb.forward(ids, mask).hidden)  # (B, T, V) without a cache
    cache = KVCache.for_config(bb.config, 2, 20)
    got = [bb.logits(bb.forward(ids[:, :8], mask[:, :8], cache=cache).hidden)[:, -1]]  # prefill 8
    for t in range(8, 14):  # then one position per step
        got.append(
            bb.logits(bb.forward(ids[:, t : t + 1], mask[:, : t + 1], cache=cache).hidden)[:, -1]
        )
    assert_close("cached logits", np.stack(got, axis=1), full[:, 7:], atol=CACHE_ATOL)


def test_left_padded_batch_row_equals_the_prompt_alone(lm):
    tok = lm.preprocessor.tokenizer
    prompts = ["The cat", "The dog ran to the park and", "A small"]
    batch = lm.preprocessor.generate_preprocess(prompts)
    assert not batch["padding_mask"][0, 0], "the short prompt should be left-padded"
    out = generate_ids(
        lm.backbone, batch["token_ids"], batch["padding_mask"], 30, GreedySampler(), (), 3
    )
    P = batch["token_ids"].shape[1]
    for b, prompt in enumerate(prompts):
        ids = np.array([tok.encode(prompt)])
        alone = generate_ids(
            lm.backbone,
            ids,
            np.ones(ids.shape, bool),
            ids.shape[1] + 30 - P,
            GreedySampler(),
            (),
            3,
        )
        assert out["token_ids"][b, P:].tolist() == alone["token_ids"][0, ids.shape[1] :].tolist(), (
            prompt
        )
    # and the logits themselves agree, not only their argmax
    padded = lm.backbone.forward(batch["token_ids"], batch["padding_mask"]).hidden[0, -1]
    ids = np.array([tok.encode(prompts[0])])
    alone = lm.backbone.forward(ids, np.ones(ids.shape, bool)).hidden[0, -1]
    assert_close("left-padded hidden", padded, alone, atol=PAD_ATOL)


# --- stop tokens, padding of finished rows, strip_prompt ----------------------------------------


def test_stop_token_ends_the_row_and_pads_after_it(lm):
    ids = np.array([lm.preprocessor.tokenizer.encode("The dog ran to")])
    free = generate_ids(
        lm.backbone, ids, np.ones(ids.shape, bool), ids.shape[1] + 12, GreedySampler(), (), 3
    )["token_ids"][0]
    new = free[ids.shape[1] :]
    stop_id = int(new[3])  # a token the greedy run emits 4th
    first = int(np.flatnonzero(new == stop_id)[0])
    batch = {
        "token_ids": np.concatenate([ids, ids]),
        "padding_mask": np.ones((2, ids.shape[1]), bool),
    }
    out = generate_ids(
        lm.backbone,
        batch["token_ids"],
        batch["padding_mask"],
        ids.shape[1] + 12,
        GreedySampler(),
        (stop_id,),
        3,
    )
    row = out["token_ids"][0, ids.shape[1] :]
    assert row.tolist() == new[: first + 1].tolist()  # all rows stopped: the output ends there
    assert out["padding_mask"].all()


def test_rows_that_stop_early_are_padded_and_masked(lm, golden):
    case = next(
        c
        for c in golden["cases"]
        if c["kind"] == "greedy" and len(c["text"]) > 1 and c["eos_token_id"] == 2
    )
    ids, mask, max_length, stop = _case_args(case)
    out = generate_ids(lm.backbone, ids, mask, max_length, GreedySampler(), stop, 3)
    P = ids.shape[1]
    for row, keep in zip(out["token_ids"], out["padding_mask"]):
        new, kept = row[P:], keep[P:]
        if 2 in new.tolist():
            i = new.tolist().index(2)
            assert (new[i + 1 :] == 3).all() and kept[: i + 1].all() and not kept[i + 1 :].any()
        else:
            assert kept.all()
    assert any(2 in r[P:].tolist() for r in out["token_ids"]), (
        "the case should have a row that stops"
    )


def test_text_generate_strip_prompt_and_stop_auto(lm):
    full = lm.generate("The cat", max_length=30)
    completion = lm.generate("The cat", max_length=30, strip_prompt=True)
    assert full.startswith("The cat") and full == "The cat" + completion
    assert "</s>" not in full and "<pad>" not in full
    batched = lm.generate(["The cat", "We cooked"], max_length=30, strip_prompt=True)
    assert batched[0] == completion
    # with stop_token_ids=None the run goes on past </s> to max_length
    ids = lm.generate(
        {"token_ids": np.array([lm.preprocessor.tokenizer.encode("The cat")])},
        max_length=30,
        stop_token_ids=None,
    )
    assert ids["token_ids"].shape == (1, 30)


def test_temperature_zero_and_alpha_zero_are_greedy(lm):
    greedy = lm.generate("The train left the", max_length=24)
    for sampler in (
        TopKSampler(k=5, seed=1, temperature=0),
        TopPSampler(p=0.9, temperature=0),
        ContrastiveSampler(k=4, alpha=0.0),
    ):
        lm.sampler = sampler
        try:
            assert lm.generate("The train left the", max_length=24) == greedy, sampler
        finally:
            lm.sampler = None


def test_seeded_sampling_is_reproducible(lm):
    lm.sampler = TopKSampler(k=20, seed=7, temperature=1.5)
    try:
        a = lm.generate(["The cat", "Le chat"], max_length=30, stop_token_ids=None)
        b = lm.generate(["The cat", "Le chat"], max_length=30, stop_token_ids=None)
        lm.sampler = TopKSampler(k=20, seed=8, temperature=1.5)
        c = lm.generate(["The cat", "Le chat"], max_length=30, stop_token_ids=None)
    finally:
        lm.sampler = None
    assert a == b and a != c


def test_contrastive_search_runs_and_penalises_repetition(lm):
    lm.sampler = ContrastiveSampler(k=4, alpha=0.6)
    try:
        out = lm.generate(
            {"token_ids": np.array([lm.preprocessor.tokenizer.encode("The robot")])}, max_length=24
        )
    finally:
        lm.sampler = None
    assert out["token_ids"].shape[1] <= 24 and out["padding_mask"].all()


# --- streaming ------------------------------------------------------------------------------------


def test_utf8_pieces_never_split_a_character(lm):
    tok = lm.preprocessor.tokenizer
    text = "我们在学校 🤖 crème brûlée 🎉"
    ids = tok.encode(text)
    pieces = Utf8Pieces(tok)
    out = [pieces.push([i]) for i in ids] + [pieces.flush()]
    assert "".join(out) == text == tok.decode(ids)
    assert "" in out, "no token ended inside a character: the test would not exercise holding back"
    assert all("\ufffd" not in p for p in out)


def test_utf8_pieces_flush_ends_an_incomplete_character_like_decode(lm):
    tok = lm.preprocessor.tokenizer
    ids = tok.encode("我")
    assert len(ids) > 1, "expected a CJK character to span several byte-level tokens"
    pieces = Utf8Pieces(tok)
    got = "".join(pieces.push([i]) for i in ids[:-1]) + pieces.flush()
    assert got == tok.decode(ids[:-1])


@pytest.mark.parametrize("prompt", ["我们在", "The robot", "Le chat"])
@pytest.mark.parametrize("strip_prompt", [False, True])
def test_stream_concatenates_to_generate(lm, prompt, strip_prompt):
    pieces = list(lm.stream(prompt, max_length=28, strip_prompt=strip_prompt))
    assert "".join(pieces) == lm.generate(prompt, max_length=28, strip_prompt=strip_prompt)
    assert all(p and "\ufffd" not in p for p in pieces)
    assert (
        list(lm.generate(prompt, max_length=28, strip_prompt=strip_prompt, stream=True)) == pieces
    )


def test_stream_with_beam_search_yields_the_best_beam(lm):
    lm.sampler = BeamSampler(num_beams=3)
    try:
        assert "".join(lm.stream("The cat", max_length=24)) == lm.generate("The cat", max_length=24)
    finally:
        lm.sampler = None


# --- argument errors --------------------------------------------------------------------------------


def test_prompt_longer_than_max_length_is_an_argument_error(lm):
    with pytest.raises(ArgumentError, match="max_length 2 counts prompt"):
        lm.generate("The dog ran to the park", max_length=2)


@pytest.mark.parametrize("sampler", [GreedySampler(), BeamSampler(num_beams=2)])
def test_max_length_equal_to_the_prompt_returns_the_prompt(lm, sampler):
    ids = np.array([[10, 11, 12]])
    out = generate_ids(lm.backbone, ids, np.ones(ids.shape, bool), 3, sampler, (2,), 3)
    assert out["token_ids"].tolist() == ids.tolist() and out["padding_mask"].all()


def test_token_inputs_without_max_length_fill_the_padding_and_auto_stops_use_the_config_eos(lm):
    bare = BloomCausalLM(lm.backbone, preprocessor=None)
    x = {"token_ids": np.array([[10, 11, 12]]), "padding_mask": np.ones((1, 3), bool)}
    # keras-hub: no max_length means the input width; with no padding there is nothing to fill
    assert bare.generate(x, stop_token_ids=None)["token_ids"].tolist() == [[10, 11, 12]]
    padded = {"token_ids": np.array([[10, 11, 12, 3, 3]]), "padding_mask": [[1, 1, 1, 0, 0]]}
    filled = bare.generate(padded, stop_token_ids=None)
    assert filled["token_ids"].tolist() == bare.generate(x, 5, None)["token_ids"].tolist()
    assert filled["padding_mask"].all()
    # "auto" without a tokenizer: the config's eos id (2 here), as HF
    assert lm.backbone.config.eos_token_id == 2
    assert (
        bare.generate(x, max_length=8)["token_ids"].tolist()
        == bare.generate(x, max_length=8, stop_token_ids=(2,))["token_ids"].tolist()
    )
    out = bare.generate(x, max_length=8, stop_token_ids=None)
    assert out["token_ids"].shape == (1, 8) and out["token_ids"][0, :3].tolist() == [10, 11, 12]
    with pytest.raises(ArgumentError, match="no tokens"):
        bare.generate(
            {"token_ids": np.array([[3, 3]]), "padding_mask": np.zeros((1, 2), bool)},
            max_length=4,
            stop_token_ids=None,
        )


# --- live parity -----------------------------------------------------------------------------------


@requires_transformers
def test_live_greedy_and_beam_equal_transformers(lm):
    import torch
    from transformers import BloomForCausalLM, GenerationConfig

    model = BloomForCausalLM.from_pretrained(str(golden_path("generate/model"))).eval()
    model.generation_config.eos_token_id = None
    tok = lm.preprocessor.tokenizer
    batch = lm.preprocessor.generate_preprocess(["A farmer grows", "The teacher", "Das Mädchen"])
    ids, mask = batch["token_ids"], batch["padding_mask"]
    for eos, beams in ((2, 1), (None, 1), (2, 3)):
        cfg = GenerationConfig(
            do_sample=False,
            num_beams=beams,
            max_length=ids.shape[1] + 14,
            eos_token_id=eos,
            pad_token_id=3,
            return_dict_in_generate=True,
            output_scores=True,
        )
        with torch.no_grad():
            ref = model.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask.astype(np.int64)),
                generation_config=cfg,
            )
        sampler = GreedySampler() if beams == 1 else BeamSampler(num_beams=beams)
        out = generate_ids(
            lm.backbone, ids, mask, ids.shape[1] + 14, sampler, () if eos is None else (eos,), 3
        )
        assert out["token_ids"].tolist() == ref.sequences.tolist(), f"eos={eos} beams={beams}"
        if beams > 1:
            assert_close(
                "live beam scores", out["scores"], ref.sequences_scores.numpy(), atol=SCORE_ATOL
            )
    assert tok.decode(ids[0][mask[0]]) == "A farmer grows"


# --- CLI: python -m minibloom generate --------------------------------------------------------------


def _cli(argv, capsys):
    from minibloom import cli

    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_streams_the_same_text_as_generate(lm, capsys):
    model = str(golden_path("generate/model"))
    rc, out, err = _cli(
        ["generate", "The cat", "--preset", model, "--max-length", "30", "--stats"], capsys
    )
    assert rc == 0 and out == lm.generate("The cat", max_length=30) + "\n"
    n_prompt = len(lm.preprocessor.tokenizer.encode("The cat"))
    assert err.startswith(f"prompt tokens {n_prompt}, new tokens "), err
    assert "prefill" in err and "prefill" in err and "tokens/s" in err


def test_cli_reads_the_prompt_from_stdin_and_samples_reproducibly(lm, capsys, monkeypatch):
    import io

    model = str(golden_path("generate/model"))
    argv = [
        "generate",
        "-",
        "--preset",
        model,
        "--max-length",
        "24",
        "--sampler",
        "top_k",
        "--top-k",
        "8",
        "--seed",
        "3",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("Le chat\n"))
    _, first, _ = _cli(argv, capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO("Le chat\n"))
    _, second, _ = _cli(argv, capsys)
    assert first == second and first.startswith("Le chat")
    rc, greedy, _ = _cli(
        [
            "generate",
            "Le chat",
            "--preset",
            model,
            "--max-length",
            "24",
            "--sampler",
            "top_k",
            "--temperature",
            "0",
        ],
        capsys,
    )
    assert greedy == lm.generate("Le chat", max_length=24) + "\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sampler", "top_k", "--top-k", "0"], "--top-k: expected an integer >= 1, found 0"),
        (
            ["--sampler", "top_p", "--top-p", "1.5"],
            "--top-p: expected a finite number in (0, 1], found 1.5",
        ),
        (["--temperature", "-1"], "--temperature: expected a finite number >= 0"),
        (["--temperature", "inf"], "--temperature: expected a finite number >= 0"),
        (["--max-length", "1"], "max_length 1 counts prompt"),
        (["--repetition-penalty", "0"], "--repetition-penalty: expected a finite number > 0"),
        (["--early-stopping", "maybe"], "--early-stopping: expected true, false or never"),
        (
            ["--sampler", "beam", "--num-beams", "2", "--num-return-sequences", "3"],
            "more than num_beams 2",
        ),
    ],
)
def test_cli_bad_arguments_get_one_line(capsys, extra, message):
    rc, out, err = _cli(
        ["generate", "The dog ran", "--preset", str(golden_path("generate/model"))] + extra, capsys
    )
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_cli_unknown_preset_and_missing_default_model(capsys, monkeypatch):
    from minibloom.errors import PresetNotFoundError
    from minibloom.io import presets

    rc, _, err = _cli(["generate", "x", "--preset", "no_such_preset_anywhere"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no_such_preset_anywhere" in err

    def no_default():
        raise PresetNotFoundError("weights/ is empty")

    monkeypatch.setattr(presets, "default_model_dir", no_default)
    rc, _, err = _cli(["generate", "x"], capsys)
    assert rc == 2 and "no default model is shipped" in err and "--preset" in err


# --- the 16-bit matrix-vector kernel (numba == plain twin) -------------------------------------------


@pytest.mark.parametrize("kind", ["BF16", "F16"])
def test_matvec16_numba_equals_plain(monkeypatch, kind):
    from minibloom.kernels.matvec16 import matvec16, matvec16_plain

    rng = np.random.default_rng(0)
    W = (0.05 * rng.standard_normal((96, 200))).astype(np.float32)
    w16 = (
        (W.view(np.uint32) >> 16).astype(np.uint16)
        if kind == "BF16"
        else W.astype(np.float16).view(np.uint16)
    )
    x = rng.standard_normal((3, 200)).astype(np.float32)
    fast = matvec16(x, w16, kind)
    plain = matvec16_plain(x, w16, kind)
    assert fast.dtype == plain.dtype == np.float32 and fast.shape == (3, 96)
    assert_close(f"matvec16 {kind} numba vs plain", fast, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["BF16", "F16"])
def test_16_bit_widening_is_exact_for_every_pattern(kind):
    from minibloom.kernels.matvec16 import _widen_numba, widen16

    every = np.arange(65536, dtype=np.uint16).reshape(
        256, 256
    )  # zeros, subnormals, inf, nan, both signs
    got, ref = _widen_numba(every, kind == "BF16"), widen16(every, kind)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    if kind == "F16":
        np.testing.assert_array_equal(ref, every.view(np.float16).astype(np.float32))


# --- hostile generation arguments (docs/RELIABILITY.md, "Generation arguments") ----------------


def test_kv_cache_too_big_for_memory_is_refused_before_allocating():
    from minibloom.generate import generate_ids
    from minibloom.model import BloomBackbone

    backbone = BloomBackbone(vocabulary_size=32, num_layers=2, num_heads=2, hidden_dim=8)
    prompt = np.ones((1, 3), dtype=np.int64)
    with pytest.raises(ArgumentError, match=r"max_length 1000000000000: the KV cache .* GiB"):
        generate_ids(backbone, prompt, np.ones_like(prompt, dtype=bool), max_length=10**12)


def test_stop_ids_outside_the_vocabulary_are_refused():
    from minibloom.generate import generate_ids
    from minibloom.model import BloomBackbone

    backbone = BloomBackbone(vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8)
    prompt = np.ones((1, 3), dtype=np.int64)
    for bad in (32, -1, 10**9):
        with pytest.raises(
            ArgumentError, match="stop_token_ids: .* outside the model's vocabulary"
        ):
            generate_ids(
                backbone,
                prompt,
                np.ones_like(prompt, dtype=bool),
                max_length=8,
                stop_token_ids=(bad,),
            )


def test_empty_prompt_and_empty_string_in_a_batch_are_argument_errors(lm):
    with pytest.raises(ArgumentError, match="prompt 0 has no tokens"):
        lm.generate("", max_length=8)
    with pytest.raises(ArgumentError, match="prompt 1 has no tokens"):
        lm.generate(["The cat", ""], max_length=8)
