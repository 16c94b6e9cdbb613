"""One corpus reader for every command: plain text, JSON lines, .xz / .gz of either; one boundary rule.

Finding 4 of issue 10: `train` and `evaluate` read a .jsonl corpus as raw JSON text, while
`train-tokenizer` read its "text" fields. Now all three go through `minibloom.training.data.iter_documents`:
plain text documents are separated by blank lines; a JSON line is one document (its "text").
Bad input is one ArgumentError naming the file and the line (or byte offset).
"""

import gzip
import json
import lzma

import numpy as np
import pytest
from conftest import golden_path
from test_reliability_arguments import assert_one_error_line, cli, tiny_model_dir, tree_hash

from minibloom.errors import ArgumentError
from minibloom.tokenizer import BloomTokenizer
from minibloom.training.data import iter_documents, load_tokens, tokenize_files

DOCS = ["first doc\nits second line", "second doc", "héllo wörld 你好", "  indented\n\ttabbed"]


def _write(path, docs, fmt):
    """Write `docs` as plain text (blank lines between) or JSON lines, compressed by the name."""
    if fmt == "jsonl":
        raw = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    else:
        raw = "\n\n\n".join(docs).encode() + b"\n"
    if path.name.endswith(".xz"):
        raw = lzma.compress(raw)
    elif path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    "name", ["c.txt", "c.txt.xz", "c.txt.gz", "c", "c.jsonl", "c.jsonl.xz", "c.jsonl.gz", "C.JSONL"]
)
def test_every_format_gives_the_same_documents(tmp_path, name):
    path = _write(tmp_path / name, DOCS, "jsonl" if ".jsonl" in name.lower() else "text")
    counts = {}
    assert list(iter_documents(path, counts)) == DOCS
    expected = (
        sum(len(d.encode()) + 1 for d in DOCS)
        if ".jsonl" in name.lower()
        else len("\n\n\n".join(DOCS).encode()) + 1
    )
    assert counts["bytes"] == expected


def test_plain_text_boundaries_and_line_endings(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"a\r\nb\r\n\r\n  \t \nc\rd\r\re\n\n\n")
    assert list(iter_documents(path)) == [
        "a\nb",
        "c\nd",
        "e",
    ]  # \r\n and \r end lines, as in text mode


def test_jsonl_skips_blank_lines_and_empty_texts(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"text": "a"}\n\n   \n{"text": ""}\n{"text": "b\\n\\nc", "meta": 1}\n', encoding="utf-8"
    )
    assert list(iter_documents(path)) == [
        "a",
        "b\n\nc",
    ]  # a JSON text is one document, blank lines and all


@pytest.mark.parametrize(
    "name, raw, needles",
    [
        ("bad.jsonl", b'{"text": "a"}\n{"text": "b"\n', ["bad.jsonl, line 2: not valid JSON"]),
        (
            "bad.jsonl",
            b'{"text": "a"}\n["text"]\n',
            ["line 2", 'string "text" field', "found a JSON list"],
        ),
        ("bad.jsonl", b'{"txt": "a"}\n', ["line 1", 'no "text" field']),
        ("bad.jsonl", b'{"text": 3}\n', ["line 1", '"text" of type int']),
        ("bad.jsonl", b"[" * 100000 + b"\n", ["line 1", "nested too deeply"]),
        (
            "bad.txt",
            "ok line\n\nnext\n".encode() + b"caf\xe9\n",
            ["bad.txt: not UTF-8 text at line 4", "byte 17 of the file"],
        ),
        (
            "bad.txt.xz",
            lzma.compress("ok\n".encode() + b"\xff\n"),
            ["not UTF-8 text at line 2", "byte 3 of the decompressed text"],
        ),
        (
            "bad.txt.xz",
            lzma.compress(b"hello world\n" * 100)[:40],
            ["bad.txt.xz: not a valid .xz file", "truncated"],
        ),
        ("bad.txt.xz", b"plain text, not xz\n", ["bad.txt.xz: not a valid .xz file"]),
        ("bad.jsonl.gz", b"not gzip at all\n", ["bad.jsonl.gz: not a valid .gz file"]),
        (
            "bad.txt.gz",
            gzip.compress(b"hello world\n" * 100)[:-12],
            ["bad.txt.gz: not a valid .gz file"],
        ),
    ],
)
def test_bad_corpus_files_name_the_file_and_the_place(tmp_path, name, raw, needles):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(ArgumentError) as info:
        list(iter_documents(path))
    text = str(info.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


def test_train_evaluate_and_train_tokenizer_read_jsonl_alike(tmp_path, model, capsys):
    """The regression of finding 4: the same documents as .jsonl.xz and as .txt give the same tokens,
    the same evaluation and the same trained tokenizer."""
    from minibloom.training.bpe_train import read_training_texts

    docs = [f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40)]
    txt, jsonl = (
        _write(tmp_path / "c.txt", docs, "text"),
        _write(tmp_path / "c.jsonl.xz", docs, "jsonl"),
    )
    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    a = load_tokens(tokenize_files([txt], tok, tmp_path / "cache"))
    b = load_tokens(tokenize_files([jsonl], tok, tmp_path / "cache"))
    np.testing.assert_array_equal(a, b)
    assert "{" not in tok.decode(b.tolist()) and list(b).count(tok.end_token_id) == len(docs)
    assert read_training_texts([jsonl]) == read_training_texts([txt]) == docs

    scores = []
    for path in (txt, jsonl):
        rc, out, err = cli(capsys, "evaluate", path, "--preset", model, "--seq-len", "16")
        assert rc == 0, err
        scored, metrics = out.splitlines()
        scores.append(
            (scored.split(":")[1].split(",")[0], metrics.split(", ")[:2])
        )  # tokens, loss, perplexity
    assert (
        scores[0] == scores[1]
    )  # bits per byte differ only by the byte count (blank lines vs JSON)

    made = []
    for path in (txt, jsonl):
        rc, _, err = cli(
            capsys,
            "train-tokenizer",
            "--data",
            path,
            "--vocab-size",
            "300",
            "--out",
            tmp_path / f"{path.name}.json",
        )
        assert rc == 0, err
        made.append(BloomTokenizer.from_file(tmp_path / f"{path.name}.json").to_json())
    assert made[0] == made[1]

    rc, _, err = cli(
        capsys,
        "train",
        "--data",
        jsonl,
        "--out",
        tmp_path / "run",
        "--preset",
        model,
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--eval-every",
        "0",
        "--no-progress",
    )
    assert rc == 0, err


def test_the_token_cache_key_covers_compressed_bytes_and_the_reader(tmp_path):
    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    path = _write(tmp_path / "c.txt.xz", DOCS, "text")
    first = tokenize_files([path], tok, tmp_path / "cache")
    assert tokenize_files([path], tok, tmp_path / "cache") == first  # re-used
    _write(path, DOCS[:2], "text")
    second = tokenize_files([path], tok, tmp_path / "cache")
    assert second != first and len(load_tokens(second)) < len(load_tokens(first))
    first.with_suffix(".json").write_text("{broken")  # a damaged cache is rebuilt, never trusted
    assert len(
        load_tokens(tokenize_files([_write(path, DOCS, "text")], tok, tmp_path / "cache"))
    ) == len(load_tokens(first))


@pytest.mark.parametrize("command", ["train", "evaluate", "train-tokenizer"])
def test_every_command_reports_a_bad_line_the_same_way(tmp_path, model, capsys, command):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n', encoding="utf-8")
    before = tree_hash(tmp_path)
    argv = {
        "train": [
            "train",
            "--data",
            bad,
            "--out",
            tmp_path / "run",
            "--preset",
            model,
            "--steps",
            "1",
        ],
        "evaluate": ["evaluate", bad, "--preset", model],
        "train-tokenizer": ["train-tokenizer", "--data", bad, "--out", tmp_path / "t.json"],
    }[command]
    rc, _, err = cli(capsys, *argv)
    assert_one_error_line(rc, err, f"{bad}, line 2", 'no "text" field')
    after = tree_hash(tmp_path)
    assert {
        k: v for k, v in after.items() if not k.startswith("run")
    } == before  # train may have made run/token_cache only
    assert not any(k.startswith("run/") and "token_cache" not in k for k in after), after
