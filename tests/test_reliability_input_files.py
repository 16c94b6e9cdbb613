"""Input files: not UTF-8, a directory for a file (and the reverse), unexpandable paths, bad tokenizer paths.

Every row runs the CLI in-process and asserts exit status 2, one stderr line naming the argument
or the file, no traceback, and the user's directory unchanged (hashed before and after).
"""

import os

import pytest
from test_reliability_arguments import CORPUS, assert_one_error_line, cli, tiny_model_dir, tree_hash

BAD_UTF8 = "fine text\n\n".encode() + b"caf\xe9 au lait\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def work(tmp_path, model):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes(BAD_UTF8)
    (tmp_path / "latin1.json").write_bytes(b'{"vocab_size": "caf\xe9"}')
    (tmp_path / "tokenizer.json").write_bytes((model / "tokenizer.json").read_bytes())
    (tmp_path / "broken_tokenizer.json").write_text('{"model": ', encoding="utf-8")
    (tmp_path / "notes.txt").write_text("just notes\n", encoding="utf-8")
    (tmp_path / "empty_dir").mkdir()
    os.mkfifo(tmp_path / "pipe")
    return tmp_path


def _train(*extra):
    return [
        "train",
        "--data",
        "{w}/corpus.txt",
        "--out",
        "{w}/run",
        "--steps",
        "1",
        "--no-progress",
        *extra,
    ]


CASES = [
    # not UTF-8
    (
        _train()[:2] + ["{w}/latin1.txt"] + _train()[3:],
        ["latin1.txt: not UTF-8 text at line 3", "byte 14"],
    ),
    (["evaluate", "{w}/latin1.txt", "--preset", "{m}"], ["latin1.txt: not UTF-8 text at line 3"]),
    (
        ["train-tokenizer", "--data", "{w}/latin1.txt", "--out", "{w}/t.json"],
        ["latin1.txt: not UTF-8 text"],
    ),
    (_train("--config", "{w}/latin1.json"), ["latin1.json", "config"]),
    (_train("--tokenizer", "{w}/latin1.txt"), ["latin1.txt", "cannot read tokenizer"]),
    # a directory where a file is expected
    (
        _train()[:2] + ["{w}/empty_dir"] + _train()[3:],
        ["argument --data", "empty_dir is a directory; expected a file"],
    ),
    (
        ["evaluate", "{w}/empty_dir", "--preset", "{m}"],
        ["argument FILE", "empty_dir is a directory"],
    ),
    (
        ["train-tokenizer", "--data", "{w}/empty_dir", "--out", "{w}/t.json"],
        ["argument --data", "is a directory"],
    ),
    (_train("--config", "{w}/empty_dir"), ["argument --config", "empty_dir is a directory"]),
    (_train("--tokenizer", "{w}/empty_dir"), ["empty_dir", "expected tokenizer.json"]),
    (["tokenize", "x", "--tokenizer", "{w}/empty_dir"], ["empty_dir", "expected tokenizer.json"]),
    # a pipe where a file is expected (never opened: it would block)
    (_train()[:2] + ["{w}/pipe"] + _train()[3:], ["argument --data", "pipe is not a regular file"]),
    (_train("--tokenizer", "{w}/pipe"), ["--tokenizer", "pipe: not a regular file"]),
    # a file where a directory is expected
    (
        ["generate", "hi", "--preset", "{w}/notes.txt"],
        ["argument --preset", "notes.txt is a file; expected a model directory"],
    ),
    (_train("--preset", "{w}/notes.txt"), ["argument --preset", "notes.txt is a file"]),
    (
        ["evaluate", "{w}/corpus.txt", "--preset", "{w}/notes.txt"],
        ["argument --preset", "is a file"],
    ),
    (
        ["dump", "{w}/notes.txt", "--prompt", "x", "--out", "{w}/a.npz"],
        ["argument PRESET_OR_DIR", "notes.txt is a file"],
    ),
    (["parity", "{w}/notes.txt"], ["argument PRESET_OR_DIR", "notes.txt is a file"]),
    (
        _train()[:4] + ["{w}/notes.txt"] + _train()[5:],
        ["argument --out", "notes.txt exists and is not a directory"],
    ),
    (
        _train()[:4] + ["{w}/notes.txt/run"] + _train()[5:],
        ["argument --out", "its parent", "notes.txt is not a directory"],
    ),
    (["generate", "hi", "--preset", "{w}/empty_dir"], ["empty_dir", "no config.json"]),
    # paths that cannot be expanded (Path.expanduser raises RuntimeError)
    (
        _train()[:2] + ["~nosuchuser/c.txt"] + _train()[3:],
        ["argument --data", "cannot expand '~nosuchuser/c.txt'", "no user 'nosuchuser'"],
    ),
    (_train()[:4] + ["~nosuchuser/run"] + _train()[5:], ["argument --out", "cannot expand"]),
    (_train("--config", "~nosuchuser/config.json"), ["argument --config", "cannot expand"]),
    (_train("--tokenizer", "~nosuchuser/tokenizer.json"), ["--tokenizer", "cannot expand"]),
    (["generate", "hi", "--preset", "~nosuchuser/model"], ["argument --preset", "cannot expand"]),
    (["evaluate", "~nosuchuser/x.txt"], ["argument FILE", "cannot expand"]),
    (
        ["train-tokenizer", "--data", "{w}/corpus.txt", "--out", "~nosuchuser/t.json"],
        ["argument --out", "cannot expand"],
    ),
    (
        ["dump", "{m}", "--prompt", "x", "--out", "~nosuchuser/a.npz"],
        ["argument --out", "cannot expand"],
    ),
    (["tokenize", "x", "--tokenizer", "~nosuchuser/t.json"], ["--tokenizer", "cannot expand"]),
    # tokenizer paths
    (_train("--tokenizer", "{w}/missing.json"), ["missing.json"]),
    (
        _train("--tokenizer", "{w}/broken_tokenizer.json"),
        ["broken_tokenizer.json", "broken_tokenizer.json: invalid JSON"],
    ),
    (["tokenize", "x", "--tokenizer", "{w}/broken_tokenizer.json"], ["broken_tokenizer.json"]),
    (
        _train("--preset", "{m}", "--tokenizer", "{w}/broken_tokenizer.json"),
        ["broken_tokenizer.json"],
    ),
    # missing files
    (
        _train()[:2] + ["{w}/missing.txt"] + _train()[3:],
        ["argument --data", "missing.txt: no such file"],
    ),
    (_train("--config", "{w}/missing.json"), ["argument --config", "missing.json: no such file"]),
]


@pytest.mark.parametrize(
    "argv, needles", CASES, ids=[f"{i}-{a[0]}" for i, (a, _) in enumerate(CASES)]
)
def test_bad_input_paths_get_one_line(argv, needles, work, model, capsys):
    before, model_before = tree_hash(work), tree_hash(model)
    argv = [a.format(w=work, m=model) for a in argv]
    rc, out, err = cli(capsys, *argv)
    assert_one_error_line(rc, err, *[n.format(w=work) for n in needles])
    assert tree_hash(work) == before and tree_hash(model) == model_before


def test_standard_input_not_utf8_or_closed(work, model, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8"))
    rc, _, err = cli(capsys, "tokenize", "-", "--tokenizer", work / "tokenizer.json")
    assert_one_error_line(rc, err, "standard input is not UTF-8 text (byte 3")
    monkeypatch.setattr(sys, "stdin", None)
    rc, _, err = cli(capsys, "generate", "-", "--preset", model)
    assert_one_error_line(rc, err, "PROMPT '-': standard input is closed")
