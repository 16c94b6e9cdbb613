"""BloomCausalLMPreprocessor: packing, shifting, padding side and the start/end token options.

A toy word-level tokenizer (BLOOM's special ids 0-3, one id per word) keeps the expected arrays
readable; the packing code only sees `encode`, `decode` and the special ids, so it is what runs
with the real BloomTokenizer too (checked at the end when tokenizer.py is present).
"""

import numpy as np
import pytest

from minibloom.errors import ArgumentError
from minibloom.preprocessor import BloomCausalLMPreprocessor

UNK, BOS, EOS, PAD = 0, 1, 2, 3


class WordTokenizer:
    """Splits on spaces; words get ids 4, 5, ... in order of `words`."""

    start_token_id, end_token_id, pad_token_id = BOS, EOS, PAD

    def __init__(self, words):
        self.ids = {w: i + 4 for i, w in enumerate(words)}
        self.words = {i: w for w, i in self.ids.items()}

    def encode(self, text):
        return [self.ids.get(w, UNK) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words.get(i, f"<{i}>") for i in ids)


TOK = WordTokenizer(["airplane", "at", "airport", "the", "quick", "brown", "fox"])
A, AT, PORT = 4, 5, 6


def test_keras_layout_with_start_token():
    """keras-hub's own example: "airplane at airport", sequence_length 8, <s> and </s>."""
    pre = BloomCausalLMPreprocessor(TOK, sequence_length=8, add_start_token=True)
    x, y, w = pre("airplane at airport")
    np.testing.assert_array_equal(x["token_ids"], [[BOS, A, AT, PORT, EOS, PAD, PAD, PAD]])
    np.testing.assert_array_equal(x["padding_mask"], [[1, 1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(y, [[A, AT, PORT, EOS, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(w, [[1, 1, 1, 1, 0, 0, 0, 0]])
    assert x["token_ids"].dtype == np.int64 and x["padding_mask"].dtype == bool
    assert y.dtype == np.int64 and w.dtype == np.float32


def test_bloom_default_no_start_token():
    pre = BloomCausalLMPreprocessor(TOK, sequence_length=5)
    x, y, w = pre(["airplane at airport", "fox"])
    np.testing.assert_array_equal(
        x["token_ids"], [[A, AT, PORT, EOS, PAD], [10, EOS, PAD, PAD, PAD]]
    )
    np.testing.assert_array_equal(y, [[AT, PORT, EOS, PAD, PAD], [EOS, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(w, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(x["padding_mask"], [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])


def test_truncation_keeps_the_beginning_and_the_end_token():
    pre = BloomCausalLMPreprocessor(TOK, sequence_length=3)
    x, y, w = pre("the quick brown fox airplane")
    # packed to 4 = 3 words + </s>
    np.testing.assert_array_equal(x["token_ids"], [[7, 8, 9]])
    np.testing.assert_array_equal(y, [[8, 9, EOS]])
    np.testing.assert_array_equal(w, [[1, 1, 1]])
    pre = BloomCausalLMPreprocessor(TOK, sequence_length=3, add_end_token=False)
    x, y, _ = pre("the quick brown fox airplane")
    np.testing.assert_array_equal(y, [[8, 9, 10]])


def test_sequence_length_override_and_errors():
    pre = BloomCausalLMPreprocessor(TOK, sequence_length=8)
    x, _, _ = pre("fox", sequence_length=2)
    assert x["token_ids"].shape == (1, 2)
    with pytest.raises(ArgumentError, match="pass only x"):
        pre("fox", y=[1])
    with pytest.raises(ArgumentError, match="list of strings"):
        pre([1, 2])
    with pytest.raises(ArgumentError, match="sequence_length"):
        BloomCausalLMPreprocessor(TOK, sequence_length=0)


def test_generate_preprocess_left_pads_without_end_token():
    pre = BloomCausalLMPreprocessor(TOK, sequence_length=8)
    out = pre.generate_preprocess(["airplane at airport", "fox"])
    np.testing.assert_array_equal(out["token_ids"], [[A, AT, PORT], [PAD, PAD, 10]])
    np.testing.assert_array_equal(out["padding_mask"], [[1, 1, 1], [0, 0, 1]])
    out = BloomCausalLMPreprocessor(TOK, add_start_token=True).generate_preprocess(
        "fox", sequence_length=4
    )
    np.testing.assert_array_equal(out["token_ids"], [[PAD, PAD, BOS, 10]])


def test_generate_postprocess_drops_padding_and_specials():
    pre = BloomCausalLMPreprocessor(TOK)
    ids = np.array([[PAD, BOS, A, AT, EOS, PAD], [7, 8, 9, 10, 4, 5]])
    mask = np.array([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    assert pre.generate_postprocess({"token_ids": ids, "padding_mask": mask}) == [
        "airplane at",
        "the quick brown fox",
    ]
    assert pre.generate_postprocess({"token_ids": np.array([4, 2])}) == "airplane"


def test_with_real_bloom_tokenizer():
    """The small BLOOM-pipeline tokenizer committed with the golden files (8000 ids)."""
    from conftest import golden_path

    from minibloom.tokenizer import BloomTokenizer

    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    pre = BloomCausalLMPreprocessor(tok, sequence_length=16)
    x, y, w = pre(["Hello world", "a"])
    ids = tok.encode("Hello world")
    np.testing.assert_array_equal(x["token_ids"][0, : len(ids) + 1], ids + [tok.end_token_id])
    np.testing.assert_array_equal(y[0, : len(ids)], ids[1:] + [tok.end_token_id])
    assert w[0].sum() == len(ids)
    assert pre.generate_postprocess(x)[0] == "Hello world"
