"""Generation controls (HF's logits processors, stop strings, max_new_tokens, num_return_sequences):
token-for-token parity with transformers `generate`, from golden files (tools/golden_controls.py)
and live, plus the semantics HF leaves to the sampler's randomness (num_return_sequences with
sampling) and the generation_config.json defaults.
"""

import json
import shutil

import numpy as np
import pytest
from conftest import assert_close, golden_path, requires_transformers

from minibloom import processors
from minibloom.causal_lm import BloomCausalLM
from minibloom.errors import ArgumentError
from minibloom.samplers import BeamSampler, GreedySampler, TopKSampler

SCORE_ATOL = 2e-5  # beam scores: sums of float32 log-probs over <= 20 steps
HF_KEYS = ("max_new_tokens", "eos_token_id", "num_beams")


@pytest.fixture(scope="module")
def golden():
    return json.loads(golden_path("controls.json").read_text())


@pytest.fixture(scope="module")
def lm():
    return BloomCausalLM.from_preset(str(golden_path("generate/model")))


def _generate(lm, case_or_kwargs, ids, mask):
    """lm.generate with an HF `generate` keyword dict: the sampler from num_beams, the stop id from
    eos_token_id, every other keyword passed as is."""
    kw = dict(case_or_kwargs)
    eos, beams = kw.pop("eos_token_id"), kw.pop("num_beams", 1)
    lm.compile(sampler=GreedySampler() if beams == 1 else BeamSampler(num_beams=beams))
    inputs = {"token_ids": np.array(ids), "padding_mask": np.array(mask, dtype=bool)}
    return lm.generate(inputs, stop_token_ids=None if eos is None else (eos,), **kw)


def _name(case):
    return f"{case['kind']} {case['text']} {case['kwargs']}"


def test_golden_controls_equal_transformers(lm, golden):
    cases = golden["cases"]
    assert len(cases) >= 100 and sum(c["changed"] for c in cases) >= 50
    worst = 0.0
    for case in cases:
        out = _generate(lm, case["kwargs"], case["token_ids"], case["padding_mask"])
        if "stop_strings" in case["kwargs"] and case["kwargs"]["eos_token_id"] is None:
            # HF pads finished rows only when an eos id is set: without one, a row that met a
            # stop string goes on while others run. Ours is padded: equal up to its stop.
            for row, ref, keep in zip(out["token_ids"], case["sequences"], out["padding_mask"]):
                n = int(keep.nonzero()[0][-1]) + 1
                assert row[:n].tolist() == ref[:n] and (row[n:] == 3).all(), _name(case)
            continue
        assert out["token_ids"].tolist() == case["sequences"], _name(case)
        if case["kind"] == "beam":
            assert_close(
                _name(case) + " scores", out["scores"], case["sequences_scores"], atol=SCORE_ATOL
            )
            worst = max(worst, float(np.abs(out["scores"] - case["sequences_scores"]).max()))
    print(f"max |beam score - HF| over the golden control cases: {worst:.3g}")


def test_every_control_kind_is_in_the_golden_cases(golden):
    kinds = {k for c in golden["cases"] for k in c["kwargs"] if k not in HF_KEYS}
    assert kinds >= {
        "repetition_penalty",
        "no_repeat_ngram_size",
        "bad_words_ids",
        "suppress_tokens",
        "min_new_tokens",
        "stop_strings",
        "num_return_sequences",
    }


@requires_transformers
def test_live_controls_equal_transformers(lm):
    import torch
    from transformers import BloomForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    model = BloomForCausalLM.from_pretrained(str(golden_path("generate/model"))).eval()
    model.generation_config.eos_token_id = None
    batch = lm.preprocessor.generate_preprocess(["A farmer grows", "The teacher", "Das Mädchen"])
    ids, mask = batch["token_ids"], batch["padding_mask"]
    settings = [
        dict(repetition_penalty=1.4, no_repeat_ngram_size=2, eos_token_id=None),
        dict(repetition_penalty=1.2, min_new_tokens=8, eos_token_id=2, num_beams=3),
        dict(no_repeat_ngram_size=3, bad_words_ids=[[5], [7, 9]], eos_token_id=2, num_beams=2),
        dict(suppress_tokens=[4, 6, 8], repetition_penalty=0.9, eos_token_id=2),
        dict(stop_strings=["the", "ing"], eos_token_id=2, num_beams=3, num_return_sequences=2),
    ]
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(golden_path("generate/model/tokenizer.json"))
    )
    for s in settings:
        kw = dict(max_new_tokens=15, **s)
        cfg = GenerationConfig(
            do_sample=False, pad_token_id=3, return_dict_in_generate=True, output_scores=True, **kw
        )
        with torch.no_grad():
            ref = model.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask.astype(np.int64)),
                generation_config=cfg,
                **({"tokenizer": hf_tok} if "stop_strings" in s else {}),
            )
        out = _generate(lm, kw, ids, mask)
        assert out["token_ids"].tolist() == ref.sequences.tolist(), str(s)
        if "num_beams" in s:
            assert_close(str(s), out["scores"], ref.sequences_scores.numpy(), atol=SCORE_ATOL)


# --- the processors themselves ---------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_ids():
    scores = np.array([[2.0, -2.0, 4.0, -1.0]], dtype=np.float32)
    ids = np.array([[3, 0, 1, 0]])  # column 0 is left padding (first real column 1)
    out = processors.repetition_penalty(scores, ids, np.array([1]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 4.0, -1.0]]  # id 3 only in the padding: untouched
    assert scores.tolist() == [[2.0, -2.0, 4.0, -1.0]]  # input unchanged


def test_no_repeat_ngram_bans_the_token_completing_a_seen_ngram():
    scores = np.zeros((1, 6), dtype=np.float32)
    out = processors.no_repeat_ngram(scores, np.array([[1, 2, 5, 1, 2, 3, 1]]), 3)
    assert np.isneginf(out).tolist() == [[False] * 6]  # suffix (3, 1) never continued before
    out = processors.no_repeat_ngram(scores, np.array([[1, 2, 5, 1, 2, 3, 1, 2]]), 3)
    assert np.flatnonzero(np.isneginf(out[0])).tolist() == [3, 5]  # (1, 2) -> 5 and 3


def test_bad_words_keep_a_bare_eos_possible_and_match_prefixes():
    scores = np.zeros((2, 6), dtype=np.float32)
    ids = np.array([[4, 1], [1, 4]])
    out = processors.bad_words(scores, ids, [[2], [5], [4, 3]], eos_ids=(2,))
    assert np.isneginf(out).tolist() == [
        [False, False, False, False, False, True],
        [False, False, False, True, False, True],
    ]


def test_min_new_tokens_blocks_eos_until_reached():
    scores = np.zeros((1, 4), dtype=np.float32)
    assert np.isneginf(processors.min_new_tokens(scores, 2, 3, (2,))[0, 2])
    assert processors.min_new_tokens(scores, 3, 3, (2,)) is scores


def test_bad_control_values_are_one_line_argument_errors(lm):
    for kw, word in (
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(bad_words_ids=[[]]), "bad_words_ids"),
        (dict(suppress_tokens=[10**6]), "suppress_tokens"),
        (dict(num_return_sequences=2), "num_return_sequences"),  # greedy gives one
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ):
        lm.compile(sampler="greedy")
        with pytest.raises(ArgumentError, match=word) as e:
            lm.generate("The cat", **kw)
        assert "\n" not in str(e.value)
    lm.compile(sampler=BeamSampler(num_beams=2))
    with pytest.raises(ArgumentError, match="num_beams"):
        lm.generate("The cat", max_new_tokens=4, num_return_sequences=3)


# --- semantics HF leaves to randomness, and the defaults --------------------------------------


def test_num_return_sequences_with_sampling_repeats_each_prompt(lm):
    lm.compile(sampler=TopKSampler(k=50, seed=3, temperature=2.0))
    texts = lm.generate(["The cat", "We cooked"], max_new_tokens=12, num_return_sequences=4)
    assert len(texts) == 8
    assert all(t.startswith("The cat") for t in texts[:4])
    assert all(t.startswith("We cooked") for t in texts[4:])
    assert len(set(texts[:4])) > 1  # the copies are sampled independently


def test_stop_strings_stop_on_a_multi_token_text(lm):
    lm.compile(sampler="greedy")
    full = lm.generate("The cat", max_new_tokens=20, stop_token_ids=None, strip_prompt=True)
    words = full.split()
    target = " ".join(words[1:3])  # two words: several tokens
    ids = lm.preprocessor.tokenizer(target)
    assert len(ids) >= 2
    cut = lm.generate(
        "The cat", max_new_tokens=20, stop_token_ids=None, strip_prompt=True, stop_strings=[target]
    )
    assert cut.endswith(target) or target in cut[-len(target) - 8 :]
    assert len(cut) < len(full) and full.startswith(cut)
    assert "".join(
        lm.stream("The cat", max_new_tokens=20, stop_token_ids=None, stop_strings=target)
    ) == ("The cat" + cut)


def test_max_new_tokens_counts_per_row_whatever_the_padding_side(lm):
    lm.compile(sampler="greedy")
    ids = np.array([[5, 6, 7, 8], [9, 10, 3, 3]])  # row 1 right-padded
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)
    out = lm.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None, max_new_tokens=5
    )
    assert out["token_ids"].shape == (2, 9)
    assert out["padding_mask"][:, 4:].all()  # five new real tokens in each row


def test_controls_default_to_generation_config_json(lm, monkeypatch):
    lm.compile(sampler="greedy")
    controls = dict(repetition_penalty=1.8, no_repeat_ngram_size=2)
    plain6 = lm.generate("The cat", max_new_tokens=6, stop_token_ids=None)
    given6 = lm.generate("The cat", max_new_tokens=6, stop_token_ids=None, **controls)
    assert given6 != plain6
    monkeypatch.setattr(lm.generation_config, "extra", dict(controls, max_new_tokens=6))
    assert lm.generate("The cat", max_length=30, stop_token_ids=None) == given6
    # a value passed wins over the file's, HF's defaults included (1.0 and 0 switch them off)
    off = dict(repetition_penalty=1.0, no_repeat_ngram_size=0)
    assert lm.generate("The cat", stop_token_ids=None, **off) == plain6


# --- the CLI ------------------------------------------------------------------------------------


def _cli(argv, capsys):
    from minibloom import cli

    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


MODEL = ["--preset", str(golden_path("generate/model"))]


def test_cli_controls_print_what_generate_returns(lm, capsys):
    argv = ["generate", "The cat", *MODEL, "--max-new-tokens", "18", "--repetition-penalty", "1.3"]
    rc, out, err = _cli(argv + ["--no-repeat-ngram-size", "2", "--no-echo"], capsys)
    lm.compile(sampler="greedy")
    want = lm.generate(
        "The cat",
        max_new_tokens=18,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        strip_prompt=True,
    )
    assert (rc, out, err) == (0, want + "\n", "")


def test_cli_multi_token_stop_and_ignore_eos(lm, capsys):
    lm.compile(sampler="greedy")
    full = lm.generate("The cat", max_new_tokens=30, stop_token_ids=None)
    rc, out, _ = _cli(
        ["generate", "The cat", *MODEL, "--max-new-tokens", "30", "--ignore-eos"], capsys
    )
    assert rc == 0 and out == full + "\n" and "</s>" not in out
    target = full.split()[4] + " " + full.split()[5]
    rc, out, _ = _cli(
        ["generate", "The cat", *MODEL, "--max-new-tokens", "30", "--ignore-eos", "--stop", target],
        capsys,
    )
    assert rc == 0 and target in out and len(out) < len(full)


def test_cli_beam_flags_and_num_return_sequences(lm, capsys):
    beam = BeamSampler(num_beams=3, length_penalty=0.5, early_stopping=True)
    lm.compile(sampler=beam)
    want = lm.generate("We cooked", max_new_tokens=12, num_return_sequences=2)
    rc, out, err = _cli(
        [
            "generate",
            "We cooked",
            *MODEL,
            "--sampler",
            "beam",
            "--num-beams",
            "3",
            "--length-penalty",
            "0.5",
        ]
        + ["--early-stopping", "true", "--max-new-tokens", "12", "--num-return-sequences", "2"],
        capsys,
    )
    assert (rc, err) == (0, "") and out == "\n---\n".join(want) + "\n"


def test_beam_settings_default_to_generation_config_json(lm, capsys, tmp_path, monkeypatch):
    """num_beams, length_penalty and early_stopping (and top_k / top_p) of a sampler named by a
    string come from generation_config.json, as in HF; a Sampler object or a flag given wins."""
    settings = dict(num_beams=3, length_penalty=0.5, early_stopping=True)
    lm.compile(sampler=BeamSampler(**settings))
    want = lm.generate("A small bird", max_new_tokens=16, num_return_sequences=2)
    lm.compile(sampler=BeamSampler())  # HF's defaults: 5 beams, penalty 1, early_stopping False
    plain = lm.generate("A small bird", max_new_tokens=16, num_return_sequences=2)
    assert plain != want
    model = tmp_path / "model"
    shutil.copytree(golden_path("generate/model"), model)
    path = model / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    lm2 = BloomCausalLM.from_preset(str(model))
    lm2.compile(sampler="beam")
    assert lm2.generate("A small bird", max_new_tokens=16, num_return_sequences=2) == want
    lm2.compile(sampler=BeamSampler())  # an object keeps its own settings
    assert lm2.generate("A small bird", max_new_tokens=16, num_return_sequences=2) == plain

    argv = ["generate", "A small bird", "--preset", str(model), "--sampler", "beam"]
    argv += ["--max-new-tokens", "16", "--num-return-sequences", "2"]
    assert _cli(argv, capsys) == (0, "\n---\n".join(want) + "\n", "")
    lm.compile(sampler=BeamSampler(num_beams=2, length_penalty=0.5, early_stopping=True))
    two = lm.generate("A small bird", max_new_tokens=16, num_return_sequences=2)
    assert two != want
    assert _cli(argv + ["--num-beams", "2"], capsys) == (0, "\n---\n".join(two) + "\n", "")

    path.write_text(json.dumps({**json.loads(path.read_text()), "num_beams": 0}))
    rc, out, err = _cli(argv, capsys)
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert "generation_config.json: num_beams" in err and ">= 1, found 0" in err


def test_cli_warns_about_sampling_flags_the_sampler_ignores(capsys):
    rc, out, err = _cli(
        [
            "generate",
            "The cat",
            *MODEL,
            "--max-new-tokens",
            "4",
            "--top-p",
            "0.9",
            "--temperature",
            "0.7",
        ],
        capsys,
    )
    assert rc == 0 and out.startswith("The cat")
    assert err.splitlines() == [
        "minibloom: warning: --top-p is ignored by --sampler greedy",  # command-line order
        "minibloom: warning: --temperature is ignored by --sampler greedy",
    ]
    rc, _, err = _cli(
        [
            "generate",
            "The cat",
            *MODEL,
            "--max-new-tokens",
            "4",
            "--sampler",
            "top_p",
            "--top-p",
            "0.9",
        ],
        capsys,
    )
    assert rc == 0 and err == ""  # used: no warning
    rc, _, err = _cli(
        [
            "generate",
            "The cat",
            *MODEL,
            "--max-new-tokens",
            "4",
            "--sampler",
            "top_k",
            "--num-beams",
            "3",
        ],
        capsys,
    )
    assert err == "minibloom: warning: --num-beams is ignored by --sampler top_k\n"


def test_version_flag_and_attribute(capsys):
    import minibloom

    rc, out, _ = _cli(["--version"], capsys)
    assert rc == 0 and out == f"minibloom {minibloom.__version__}\n"
    assert minibloom.__version__.count(".") >= 2
