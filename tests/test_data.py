"""Streaming token dataset: tokenize-once cache, packed windows, seeded shuffles, held-out split."""

import json

import numpy as np
import pytest

from minibloom.errors import ArgumentError
from minibloom.training.data import TokenWindows, load_tokens, tokenize_files


class ByteTokenizer:
    """UTF-8 bytes shifted by 4 (ids 0-3 are BLOOM's specials); counts encode calls."""

    start_token_id, end_token_id, pad_token_id = 1, 2, 3
    vocabulary_size = 260

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        return [b + 4 for b in text.encode("utf-8")]


def _ids(text):
    return [b + 4 for b in text.encode("utf-8")]


@pytest.fixture
def corpus(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("first doc\nline two\n\n\nsecond doc\n", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("héllo\n", encoding="utf-8")
    return [a, b]


def test_tokenize_documents_with_end_tokens_and_cache(corpus, tmp_path):
    tok = ByteTokenizer()
    path = tokenize_files(corpus, tok, tmp_path / "cache")
    tokens = load_tokens(path)
    expected = _ids("first doc\nline two") + [2] + _ids("second doc") + [2] + _ids("héllo") + [2]
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.dtype == np.uint16
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["num_tokens"] == len(expected)
    # second call: same file, no encoding (probe encode for the cache key only)
    calls = tok.calls
    assert tokenize_files(corpus, tok, tmp_path / "cache") == path
    assert tok.calls == calls + 1
    # changed corpus -> new token file
    corpus[1].write_text("other\n", encoding="utf-8")
    assert tokenize_files(corpus, tok, tmp_path / "cache") != path
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_windows_overlap_by_one_and_shift():
    tokens = np.arange(23, dtype=np.uint16)
    ds = TokenWindows(tokens, sequence_length=5)
    assert len(ds) == 4  # (23 - 1) // 5
    x, y, w = ds.batch([0, 3])
    np.testing.assert_array_equal(x["token_ids"], [[0, 1, 2, 3, 4], [15, 16, 17, 18, 19]])
    np.testing.assert_array_equal(y, [[1, 2, 3, 4, 5], [16, 17, 18, 19, 20]])
    assert x["token_ids"].dtype == np.int64 and x["padding_mask"].all() and w.dtype == np.float32
    assert w.shape == (2, 5) and (w == 1).all()


def test_shuffled_batches_are_seeded_and_resumable():
    ds = TokenWindows(np.arange(101), sequence_length=4)  # 25 windows
    epoch = [x["token_ids"][:, 0] // 4 for x, _, _ in ds.batches(3, seed=7, epoch=1)]
    assert len(epoch) == 8  # drop_last
    seen = np.concatenate(epoch)
    assert len(set(seen.tolist())) == 24 and not np.array_equal(seen, np.sort(seen))
    again = [x["token_ids"][:, 0] // 4 for x, _, _ in ds.batches(3, seed=7, epoch=1)]
    assert all(np.array_equal(a, b) for a, b in zip(epoch, again))
    other = np.concatenate(
        [x["token_ids"][:, 0] // 4 for x, _, _ in ds.batches(3, seed=7, epoch=2)]
    )
    assert not np.array_equal(seen, other)
    resumed = [
        x["token_ids"][:, 0] // 4 for x, _, _ in ds.batches(3, seed=7, epoch=1, start_batch=5)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(epoch[5:], resumed)) and len(resumed) == 3
    ordered = np.concatenate(
        [x["token_ids"][:, 0] // 4 for x, _, _ in ds.batches(10, shuffle=False, drop_last=False)]
    )
    np.testing.assert_array_equal(ordered, np.arange(25))


def test_heldout_split_is_the_tail():
    ds = TokenWindows(np.arange(41), sequence_length=4)  # 10 windows
    train, held = ds.split(0.2)
    assert (len(train), len(held)) == (8, 2)
    x, _, _ = held.batch([0])
    np.testing.assert_array_equal(x["token_ids"][0], [32, 33, 34, 35])
    all_train = np.concatenate(
        [x["token_ids"].ravel() for x, _, _ in train.batches(8, shuffle=False)]
    )
    assert all_train.max() < 32
    with pytest.raises(ArgumentError, match="too few"):
        TokenWindows(np.arange(5), 4).split(0.5)


def test_memmap_reads_only_what_it_needs(corpus, tmp_path):
    ds = TokenWindows.from_files(
        corpus, ByteTokenizer(), sequence_length=3, cache_dir=tmp_path / "c"
    )
    assert isinstance(ds.tokens, np.memmap)
    x, y, _ = next(ds.batches(2, shuffle=False))
    np.testing.assert_array_equal(x["token_ids"][0], _ids("fir"))


def test_errors(tmp_path):
    with pytest.raises(ArgumentError, match="nope.txt: no such file"):
        tokenize_files([tmp_path / "nope.txt"], ByteTokenizer(), tmp_path)
    with pytest.raises(ArgumentError, match="at least one"):
        tokenize_files([], ByteTokenizer(), tmp_path)
