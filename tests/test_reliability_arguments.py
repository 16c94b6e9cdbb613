"""Arguments: every CLI and API number is checked once, at the boundary, with one line naming it.

Each CLI row runs `minibloom.cli.main([...])` in-process and asserts: exit status 2, exactly one
stderr line `minibloom: error: ...` naming the argument and the accepted range, no traceback, no
stdout, and every file of the temporary directory unchanged (hashed before and after; nothing
created). A few rows also run as real `python -m minibloom` processes. The API rows call the
library with the same bad numbers and assert an ArgumentError whose one-line message names the
parameter, raised before anything is written.

The helpers here (tree_hash, cli, assert_one_error_line, tiny_model_dir, CORPUS) are shared by
the other tests/test_reliability_*.py files.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, golden_path

from minibloom.errors import ArgumentError

CORPUS = "\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(60))


def tree_hash(directory) -> dict:
    """{relative path: sha256 of the bytes, "<dir>", or the inode of a pipe / device (never read)}
    of everything under `directory`."""
    directory = Path(directory)
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_dir():
            out[rel] = "<dir>"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = f"<special inode {p.lstat().st_ino}>"
    return out


def cli(capsys, *argv):
    """(exit status, stdout, stderr lines) of `python -m minibloom argv...` run in-process."""
    from minibloom.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.splitlines()


def assert_one_error_line(rc, err_lines, *needles):
    assert rc == 2, (rc, err_lines)
    assert len(err_lines) == 1, err_lines
    line = err_lines[0]
    assert line.startswith("minibloom: error: "), line
    assert "Traceback" not in line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def tiny_model_dir(directory, seed=0, layers=1):
    """A 1-layer BLOOM (C=24, H=3) with the golden 8000-token tokenizer, saved as a model directory."""
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.model import BloomBackbone
    from minibloom.preprocessor import BloomCausalLMPreprocessor
    from minibloom.tokenizer import BloomTokenizer

    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    lm = BloomCausalLM(
        BloomBackbone(
            vocabulary_size=tok.vocabulary_size(),
            num_layers=layers,
            num_heads=3,
            hidden_dim=24,
            seed=seed,
        ),
        BloomCausalLMPreprocessor(tok, sequence_length=16),
    )
    lm.save_to_preset(directory)
    return Path(directory)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def work(tmp_path):
    """A user's directory: a corpus, a tokenizer, some notes; its hash is checked after each case."""
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    (tmp_path / "tokenizer.json").write_bytes(golden_path("tokenizer.json").read_bytes())
    (tmp_path / "NOTES.txt").write_text("my notes\n", encoding="utf-8")
    return tmp_path


def _fill(argv, work, model):
    return [
        a.format(
            corpus=work / "corpus.txt",
            out=work / "run",
            tok=work / "tokenizer.json",
            model=model,
            work=work,
        )
        for a in argv
    ]


TRAIN = [
    "train",
    "--data",
    "{corpus}",
    "--out",
    "{out}",
    "--tokenizer",
    "{tok}",
    "--layers",
    "1",
    "--hidden",
    "24",
    "--heads",
    "3",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--steps",
    "2",
    "--no-progress",
]

CLI_CASES = [
    # (argv, words the one line must contain)
    (TRAIN + ["--batch-size", "0"], ["argument --batch-size", "expected an integer >= 1, found 0"]),
    (TRAIN + ["--accumulate", "0"], ["argument --accumulate", ">= 1, found 0"]),
    (TRAIN + ["--seed", "-1"], ["argument --seed", "expected an integer >= 0, found -1"]),
    (TRAIN[:-3] + ["--epochs", "0"], ["argument --epochs", ">= 1, found 0"]),
    (TRAIN[:-3] + ["--steps", "0"], ["argument --steps", ">= 1, found 0"]),
    (
        TRAIN[:-3] + ["--steps", "1.5"],
        ["argument --steps", "expected an integer >= 1, found '1.5'"],
    ),
    (TRAIN + ["--epochs", "2"], ["argument --epochs", "not allowed with argument --steps"]),
    (TRAIN + ["--lr", "-1"], ["argument --lr", "expected a finite number > 0, found -1"]),
    (TRAIN + ["--lr", "0"], ["argument --lr", "> 0, found 0"]),
    (TRAIN + ["--lr", "nan"], ["argument --lr", "found nan"]),
    (TRAIN + ["--lr", "inf"], ["argument --lr", "found inf"]),
    (TRAIN + ["--lr", "fast"], ["argument --lr", "found 'fast'"]),
    (TRAIN + ["--warmup", "-5"], ["argument --warmup", ">= 0, found -5"]),
    (TRAIN + ["--weight-decay", "-0.1"], ["argument --weight-decay", ">= 0, found -0.1"]),
    (TRAIN + ["--clip", "-1"], ["argument --clip", ">= 0, found -1"]),
    (TRAIN + ["--heldout", "0"], ["argument --heldout", "in (0, 1), found 0"]),
    (TRAIN + ["--heldout", "1"], ["argument --heldout", "in (0, 1), found 1"]),
    (TRAIN + ["--eval-every", "-1"], ["argument --eval-every", ">= 0, found -1"]),
    (TRAIN + ["--eval-batches", "0"], ["argument --eval-batches", ">= 1, found 0"]),
    (TRAIN + ["--save-every", "-2"], ["argument --save-every", ">= 0, found -2"]),
    (TRAIN + ["--seq-len", "0"], ["argument --seq-len", ">= 1, found 0"]),
    (TRAIN + ["--layers", "0"], ["argument --layers", ">= 1, found 0"]),
    (TRAIN + ["--hidden", "-24"], ["argument --hidden", ">= 1, found -24"]),
    (TRAIN + ["--heads", "0"], ["argument --heads", ">= 1, found 0"]),
    (TRAIN + ["--schedule", "exp"], ["argument --schedule", "invalid choice: 'exp'"]),
    (TRAIN + ["--bogus"], ["unrecognized arguments: --bogus"]),
    (["train", "--data", "{corpus}"], ["required", "--out"]),
    (
        ["generate", "hi", "--preset", "{model}", "--max-length", "0"],
        ["argument --max-length", ">= 1, found 0"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--temperature", "-1"],
        ["argument --temperature", ">= 0, found -1"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--top-p", "0"],
        ["argument --top-p", "in (0, 1], found 0"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--top-p", "1.5"],
        ["argument --top-p", "found 1.5"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--top-k", "0"],
        ["argument --top-k", ">= 1, found 0"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--num-beams", "0"],
        ["argument --num-beams", ">= 1, found 0"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--alpha", "2"],
        ["argument --alpha", "in [0, 1], found 2"],
    ),
    (
        ["generate", "hi", "--preset", "{model}", "--seed", "-1"],
        ["argument --seed", ">= 0, found -1"],
    ),
    (
        ["evaluate", "{corpus}", "--preset", "{model}", "--seq-len", "0"],
        ["argument --seq-len", ">= 1, found 0"],
    ),
    (
        ["evaluate", "{corpus}", "--preset", "{model}", "--batch-size", "0"],
        ["argument --batch-size", ">= 1, found 0"],
    ),
    (
        ["train-tokenizer", "--data", "{corpus}", "--out", "{work}/t.json", "--vocab-size", "100"],
        ["argument --vocab-size", ">= 260, found 100"],
    ),
    (
        ["train-tokenizer", "--data", "{corpus}", "--out", "{work}/t.json", "--min-frequency", "0"],
        ["argument --min-frequency", ">= 1, found 0"],
    ),
    (
        ["dump", "{model}", "--prompt", "x", "--ids", "1,-2", "--out", "{work}/a.npz"],
        ["argument --ids", ">= 0"],
    ),
    (
        ["dump", "{model}", "--prompt", "x", "--ids", "a,b", "--out", "{work}/a.npz"],
        ["argument --ids", "'a,b'"],
    ),
    (
        ["dump", "{model}", "--prompt", "x", "--ids", "1,8000", "--out", "{work}/a.npz"],
        ["--ids", "[0, 8000)", "8000"],
    ),
    (
        ["dump", "{model}", "--prompt", "x", "--out", "{work}/a.txt"],
        ["argument --out", "expected a .npz file name"],
    ),
    (["parity", "{model}", "--tolerance", "-1"], ["argument --tolerance", ">= 0, found -1"]),
    (["nosuchcommand"], ["argument COMMAND", "invalid choice: 'nosuchcommand'"]),
]


@pytest.mark.parametrize(
    "argv, needles", CLI_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CLI_CASES]
)
def test_cli_bad_arguments_get_one_line_and_touch_nothing(argv, needles, work, model, capsys):
    before, model_before = tree_hash(work), tree_hash(model)
    rc, out, err = cli(capsys, *_fill(argv, work, model))
    assert_one_error_line(rc, err, *needles)
    assert out == ""
    assert tree_hash(work) == before and tree_hash(model) == model_before


def test_stop_takes_one_text_per_flag_and_leaves_the_prompt_alone(model, capsys):
    """--stop used to be nargs='+' and swallowed the prompt: `--stop X PROMPT` had no prompt."""
    from minibloom.tokenizer import BloomTokenizer

    tok = BloomTokenizer.from_file(model / "tokenizer.json")
    stop = next(
        tok.id_to_token(i) for i in range(300, 8000) if len(tok.encode(tok.decode([i]))) == 1
    )
    stop_text = tok.decode([tok.token_to_id(stop)])
    rc, out, err = cli(
        capsys,
        "generate",
        "--preset",
        model,
        "--stop",
        stop_text,
        "--stop",
        ".",
        "ROMEO:",
        "--max-length",
        "12",
    )
    assert rc == 0, err
    assert out.startswith("ROMEO:")
    rc, out, err = cli(capsys, "generate", "--preset", model, "--stop", stop_text, "ROMEO", "extra")
    assert_one_error_line(rc, err, "unrecognized arguments: extra")


def test_help_still_prints_the_usage(capsys):
    rc, out, err = cli(capsys, "train", "--help")
    assert rc == 0 and "--batch-size" in out and "previous run" in out


@pytest.mark.parametrize(
    "argv, needles",
    [
        (
            ["train", "--data", "{corpus}", "--out", "{out}", "--batch-size", "0"],
            ["argument --batch-size", "found 0"],
        ),
        (["generate", "hi", "--stop"], ["argument --stop: expected one argument"]),
        (["evaluate", "{work}/missing.txt"], ["argument FILE", "missing.txt: no such file"]),
    ],
)
def test_real_processes_print_one_line_and_exit_2(argv, needles, work, model):
    before = tree_hash(work)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "minibloom", *_fill(argv, work, model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr
    assert_one_error_line(proc.returncode, proc.stderr.splitlines(), *needles)
    assert proc.stdout == "" and tree_hash(work) == before


# ------------------------------------------------------------------------------------------------
# the API: the same checks (minibloom.arguments), raised before anything is written
# ------------------------------------------------------------------------------------------------


def _tiny_lm():
    from minibloom.causal_lm import BloomCausalLM

    return BloomCausalLM.from_preset(str(tiny_model_dir_cached()))


_CACHE = {}


def tiny_model_dir_cached():
    if "dir" not in _CACHE:
        import tempfile

        _CACHE["dir"] = tiny_model_dir(Path(tempfile.mkdtemp(prefix="minibloom-test-")) / "tiny")
    return _CACHE["dir"]


def _trainer(**kw):
    from minibloom.optim import AdamW
    from minibloom.training.train import ArrayDataset, Trainer

    ids = np.zeros((4, 4), np.int64)
    return Trainer(_tiny_lm(), AdamW(1e-3), ArrayDataset({"token_ids": ids}, ids), **kw)


TRAIN_FILES_OK = dict(
    sequence_length=16, batch_size=4, steps=2, eval_every=0, progress=False, log=lambda *a: None
)

API_CASES = [
    (
        "Trainer batch_size 0",
        lambda w: _trainer(batch_size=0),
        "batch_size: expected an integer >= 1, found 0",
    ),
    (
        "Trainer batch_size 2.0",
        lambda w: _trainer(batch_size=2.0),
        "batch_size: expected an integer >= 1, found 2.0",
    ),
    (
        "Trainer accumulate 0",
        lambda w: _trainer(accumulate_steps=0),
        "accumulate_steps: expected an integer >= 1",
    ),
    ("Trainer seed -1", lambda w: _trainer(seed=-1), "seed: expected an integer >= 0, found -1"),
    (
        "Trainer save_every -1",
        lambda w: _trainer(save_every=-1),
        "save_every: expected an integer >= 0",
    ),
    (
        "Trainer keep 0",
        lambda w: _trainer(keep_checkpoints=0),
        "keep_checkpoints: expected an integer >= 1",
    ),
    (
        "Trainer reduction",
        lambda w: _trainer(reduction="sum"),
        "reduction: expected one of 'mean', 'sum_over_batch_size'",
    ),
    (
        "run epochs 0",
        lambda w: _trainer(batch_size=2).run(epochs=0),
        "epochs: expected an integer >= 1, found 0",
    ),
    (
        "run max_steps -1",
        lambda w: _trainer(batch_size=2).run(max_steps=-1),
        "max_steps: expected an integer >= 1",
    ),
    *[
        (
            f"train_on_files {k}={v!r}",
            (lambda k, v: lambda w: _train_on_files(w, **{k: v}))(k, v),
            msg,
        )
        for k, v, msg in [
            ("sequence_length", 0, "sequence_length: expected an integer >= 1, found 0"),
            ("batch_size", 0, "batch_size: expected an integer >= 1, found 0"),
            ("steps", 0, "steps: expected an integer >= 1, found 0"),
            ("learning_rate", -1.0, "learning_rate: expected a finite number > 0, found -1"),
            (
                "learning_rate",
                float("nan"),
                "learning_rate: expected a finite number > 0, found nan",
            ),
            ("warmup", -1, "warmup: expected an integer >= 0, found -1"),
            ("weight_decay", -1.0, "weight_decay: expected a finite number >= 0"),
            ("clip", -1.0, "clip: expected a finite number >= 0"),
            ("accumulate_steps", 0, "accumulate_steps: expected an integer >= 1"),
            ("heldout", 1.0, "heldout: expected a finite number in (0, 1), found 1"),
            ("eval_every", -1, "eval_every: expected an integer >= 0"),
            ("eval_batches", 0, "eval_batches: expected an integer >= 1, found 0"),
            ("save_every", -1, "save_every: expected an integer >= 0"),
            ("seed", -1, "seed: expected an integer >= 0, found -1"),
            ("schedule", "exp", "schedule: expected one of"),
        ]
    ],
    (
        "train_on_files epochs 0",
        lambda w: _train_on_files(w, steps=None, epochs=0),
        "epochs: expected an integer >= 1",
    ),
    (
        "evaluate_file seq 0",
        lambda w: _evaluate(w, sequence_length=0),
        "sequence_length: expected an integer >= 1",
    ),
    (
        "evaluate_file batch 0",
        lambda w: _evaluate(w, batch_size=0),
        "batch_size: expected an integer >= 1, found 0",
    ),
    (
        "TokenWindows seq 0",
        lambda w: _windows(0),
        "sequence_length: expected an integer >= 1, found 0",
    ),
    (
        "split 0",
        lambda w: _windows(4).split(0),
        "heldout_fraction: expected a finite number in (0, 1)",
    ),
    (
        "train_tokenizer vocab",
        lambda w: _train_tok(vocab_size=100),
        "expected an integer >= 260, found 100",
    ),
    (
        "train_tokenizer min_frequency",
        lambda w: _train_tok(min_frequency=0),
        "min_frequency: expected an integer >= 1",
    ),
]


def _train_on_files(work, **kw):
    from minibloom.training.train import train_on_files

    args = {**TRAIN_FILES_OK, **kw}
    return train_on_files(_tiny_lm(), [work / "corpus.txt"], work / "run", **args)


def _evaluate(work, **kw):
    from minibloom.training.evaluation import evaluate_file

    return evaluate_file(_tiny_lm(), work / "corpus.txt", **kw)


def _windows(seq):
    from minibloom.training.data import TokenWindows

    return TokenWindows(np.arange(100), seq)


def _train_tok(vocab_size=300, min_frequency=2):
    from minibloom.training.bpe_train import train_tokenizer

    return train_tokenizer(["some text"], vocab_size, min_frequency=min_frequency)


@pytest.mark.parametrize("name, call, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_arguments_raise_one_line_naming_the_parameter(name, call, message, work):
    before = tree_hash(work)
    with pytest.raises(ArgumentError) as info:
        call(work)
    text = str(info.value)
    assert message in text and "\n" not in text, text
    assert tree_hash(work) == before  # no run directory, no token cache
