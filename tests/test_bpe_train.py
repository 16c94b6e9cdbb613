"""train_tokenizer and the `tokenize` / `train-tokenizer` commands."""

import json

import pytest
from conftest import ROOT, golden_path, requires_tokenizers

from minibloom import cli
from minibloom.errors import ArgumentError
from minibloom.tokenizer import BloomTokenizer
from minibloom.training.bpe_train import count_pieces, train_tokenizer

CORPUS = ROOT / "tests" / "data" / "tokenizer_corpus.json"


@pytest.fixture(scope="module")
def corpus():
    return json.loads(CORPUS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def trained(corpus):
    return train_tokenizer(corpus, 1500)


def test_count_pieces_cuts_out_specials():
    counts = count_pieces(["a b</s>a b", "x<s>"])
    assert counts == {"a": 2, " b": 2, "x": 1}


def test_trained_tokenizer_layout(trained):
    assert trained.vocabulary_size() == 1500
    assert [trained.id_to_token(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (
        trained.unk_token_id,
        trained.start_token_id,
        trained.end_token_id,
        trained.pad_token_id,
    ) == (0, 1, 2, 3)
    assert trained.id_to_token(4 + ord("a")) == "a" and trained.id_to_token(4 + ord(" ")) == "Ġ"


def test_trained_tokenizer_compresses_and_round_trips(trained, corpus):
    for line in corpus:
        ids = trained.encode(line)
        assert trained.decode(ids) == line
    text = "\n".join(corpus[:50])
    assert len(trained.encode(text)) < 0.6 * len(text.encode("utf-8"))  # merges were learned


def test_first_merge_is_the_most_frequent_pair():
    tok = train_tokenizer(["ab ab ab cd", "ab"], 4 + 256 + 1)
    assert tok._merges == [("a", "b")]


def test_training_is_deterministic(corpus):
    a = train_tokenizer(corpus[:100], 600)
    b = train_tokenizer(corpus[:100], 600)
    assert a._merges == b._merges


@requires_tokenizers
def test_hf_loads_trained_file_and_encodes_identically(trained, corpus, tmp_path):
    from tokenizers import Tokenizer

    path = trained.save(tmp_path / "tokenizer.json")
    hf = Tokenizer.from_file(str(path))
    assert [e.ids for e in hf.encode_batch(corpus)] == trained.encode_batch(corpus)
    assert BloomTokenizer.from_file(path).encode_batch(corpus[::9]) == trained.encode_batch(
        corpus[::9]
    )


def test_bad_training_arguments():
    with pytest.raises(ArgumentError, match=r"vocab_size .*expected an integer >= 260, found 100"):
        train_tokenizer(["abc"], 100)
    with pytest.raises(ArgumentError, match="texts must be strings"):
        train_tokenizer([b"abc"], 300)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def test_cli_tokenize(capsys, monkeypatch):
    path = str(golden_path("tokenizer.json"))
    tok = BloomTokenizer.from_file(path)
    assert cli.main(["tokenize", "Hello world</s>", "--tokenizer", path, "--ids"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("Hello world</s>")]
    assert cli.main(["tokenize", "a world", "--tokenizer", path, "--pieces"]) == 0
    assert capsys.readouterr().out.split() == tok.pieces("a world")
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("x\ny"))
    assert cli.main(["tokenize", "--tokenizer", path]) == 0  # no text: stdin
    rows = capsys.readouterr().out.strip().split("\n")
    assert [int(r.split("\t")[0]) for r in rows] == tok.encode("x\ny")


def test_cli_tokenize_without_tokenizer_says_what_to_do(capsys, monkeypatch, tmp_path):
    import minibloom.io.presets

    monkeypatch.setattr(minibloom.io.presets, "WEIGHTS_DIR", tmp_path)  # an empty weights/
    assert cli.main(["tokenize", "x"]) == 2
    assert "pass --tokenizer PATH" in capsys.readouterr().err


def test_cli_train_tokenizer(capsys, tmp_path, corpus):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in corpus[:200]), encoding="utf-8")
    out = tmp_path / "tok"
    out.mkdir()
    assert (
        cli.main(
            [
                "train-tokenizer",
                "--data",
                str(data),
                "--vocab-size",
                "700",
                "--out",
                str(out),
                "--keras",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    tok = BloomTokenizer.from_file(out / "tokenizer.json")
    assert tok.vocabulary_size() == 700
    assert BloomTokenizer.from_keras_assets(out / "vocabulary.json", out / "merges.txt").encode(
        corpus[0]
    ) == tok.encode(corpus[0])
    assert tok.encode_batch(corpus[:200]) == train_tokenizer(corpus[:200], 700).encode_batch(
        corpus[:200]
    )
