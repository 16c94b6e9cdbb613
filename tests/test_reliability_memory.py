"""Memory: every allocation sized by a user number is checked first (minibloom.memory.check_fits).

Real sizes where they are huge anyway (a --config or size flags describing a TB-sized model, a
--max-length of 10**12); elsewhere the available memory is patched down so that an ordinary
request no longer fits, which proves the check runs before the allocation (the patched process
would otherwise allocate happily and pass).
"""

import json

import pytest
from conftest import golden_path
from test_reliability_arguments import CORPUS, assert_one_error_line, cli, tiny_model_dir, tree_hash

import minibloom.memory
from minibloom.errors import ArgumentError

SMALL = [
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--steps",
    "1",
    "--eval-every",
    "0",
    "--no-progress",
    "--tokenizer",
    str(golden_path("tokenizer.json")),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return tmp_path


def _little_memory(monkeypatch, nbytes=2 * 2**20):
    monkeypatch.setattr(minibloom.memory, "available_memory_bytes", lambda: nbytes)


def test_a_huge_config_is_refused_before_the_random_init(work, capsys):
    config = work / "huge.json"
    config.write_text(
        json.dumps(
            {
                "model_type": "bloom",
                "vocab_size": 8000,
                "hidden_size": 16384,
                "n_layer": 100,
                "n_head": 64,
            }
        )
    )
    before = tree_hash(work)
    rc, _, err = cli(
        capsys,
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        work / "run",
        "--config",
        config,
        *SMALL,
    )
    line = assert_one_error_line(
        rc,
        err,
        "training the model of --config",
        "parameters",
        "GiB",
        "is available",
        "use a smaller model",
    )
    assert "322," in line  # 322,... million parameters: the real size, computed from the config
    assert tree_hash(work) == before


def test_huge_size_flags_are_refused_before_the_random_init(work, capsys):
    before = tree_hash(work)
    rc, _, err = cli(
        capsys,
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        work / "run",
        "--layers",
        "48",
        "--hidden",
        "32768",
        "--heads",
        "128",
        *SMALL,
    )
    assert_one_error_line(rc, err, "--layers 48 --hidden 32768 --heads 128", "GiB")
    assert tree_hash(work) == before


def test_fine_tuning_checks_the_gradients_and_moments(work, model, capsys, monkeypatch):
    """The preset's parameters are loaded; gradients + AdamW's moments (3 x) are checked before the token cache."""
    _little_memory(
        monkeypatch, 6 * 2**20
    )  # the tiny model (0.8 MB of params) loads; 3 x params + activations do not fit
    before = tree_hash(work)
    rc, _, err = cli(
        capsys,
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        work / "run",
        "--preset",
        model,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--no-progress",
    )
    assert_one_error_line(
        rc, err, "gradients, AdamW moments and activations", "--batch-size or --seq-len"
    )
    assert tree_hash(work) == before


def test_evaluate_seq_len_is_checked_before_the_forward(work, model, capsys, monkeypatch):
    from minibloom.causal_lm import BloomCausalLM

    rc, _, err = cli(
        capsys, "evaluate", work / "corpus.txt", "--preset", model, "--seq-len", "1000000000"
    )
    assert rc == 0, (
        err
    )  # a huge number alone allocates nothing: windows are capped by the file's tokens
    _little_memory(monkeypatch)
    monkeypatch.setattr(
        BloomCausalLM, "predict", lambda *a, **k: pytest.fail("predict ran before the check")
    )
    rc, _, err = cli(
        capsys, "evaluate", work / "corpus.txt", "--preset", model, "--seq-len", "1000000000"
    )
    assert_one_error_line(rc, err, "sequence_length 1000000000 x batch_size 8", "GiB", "--seq-len")


def test_generate_max_length_huge_is_one_line(model, capsys):
    rc, out, err = cli(capsys, "generate", "hi", "--preset", model, "--max-length", str(10**12))
    assert_one_error_line(rc, err, "max_length", "GiB")
    assert out == ""


def test_api_train_on_files_checks_memory_first(work, model, monkeypatch):
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.training.train import train_on_files

    lm = BloomCausalLM.from_preset(str(model))
    _little_memory(monkeypatch)
    before = tree_hash(work)
    with pytest.raises(ArgumentError, match=r"training the model .* GiB"):
        train_on_files(
            lm,
            [work / "corpus.txt"],
            work / "run",
            sequence_length=16,
            batch_size=4,
            steps=1,
            eval_every=0,
            progress=False,
            log=lambda *a: None,
        )
    assert tree_hash(work) == before
