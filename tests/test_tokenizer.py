"""BloomTokenizer: golden ids, live parity with HF `tokenizers`, round trips, twins, files, errors.

The golden tokenizer (tests/golden/tokenizer.json) was trained by HF's BpeTrainer with BLOOM's exact
pipeline, and tests/golden/tokenizer_ids.npz holds HF's ids for every line of the committed corpus
tests/data/tokenizer_corpus.json (both written by tools/golden_tokenizer.py).
"""

import contextlib
import gc
import json
import os

import numpy as np
import pytest
from conftest import ROOT, golden_path, requires_tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibloom.errors import ArgumentError, TokenizerError
from minibloom.kernels import bpe
from minibloom.tokenizer import SPLIT_EXCLUDED, BloomTokenizer, bytes_to_unicode, split_pieces

CORPUS = ROOT / "tests" / "data" / "tokenizer_corpus.json"
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def numba_switch(on: bool):
    """Select the numba or the plain twins (MINIBLOOM_NUMBA is read at call time)."""
    old = os.environ.get("MINIBLOOM_NUMBA")
    os.environ["MINIBLOOM_NUMBA"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINIBLOOM_NUMBA"]
        else:
            os.environ["MINIBLOOM_NUMBA"] = old


@pytest.fixture(scope="module")
def tok():
    return BloomTokenizer.from_file(golden_path("tokenizer.json"))


@pytest.fixture(scope="module")
def golden():
    return np.load(golden_path("tokenizer_ids.npz"))


@pytest.fixture(scope="module")
def corpus():
    return json.loads(CORPUS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(golden_path("tokenizer.json")))


# ------------------------------------------------------------------------------------------------
# golden files (no reference library needed)
# ------------------------------------------------------------------------------------------------


def test_golden_corpus_matches_its_hash(golden):
    import hashlib

    meta = json.loads(str(golden["meta"]))
    assert hashlib.sha256(CORPUS.read_bytes()).hexdigest() == meta["corpus_sha256"], (
        "corpus changed: run tools/make_golden.py tokenizer"
    )


@pytest.mark.parametrize("numba", [True, False], ids=["numba", "plain"])
def test_golden_ids_every_line(tok, golden, corpus, numba):
    ids, offsets = golden["ids"], golden["offsets"]
    assert len(offsets) == len(corpus) + 1
    with numba_switch(numba):
        mismatches = [
            i
            for i, line in enumerate(corpus)
            if tok.encode(line) != ids[offsets[i] : offsets[i + 1]].tolist()
        ]
    assert not mismatches, (
        f"{len(mismatches)} lines differ from HF, first: {corpus[mismatches[0]]!r}"
    )


def test_golden_corpus_round_trips(tok, corpus):
    assert [tok.decode(ids) for ids in tok.encode_batch(corpus)] == corpus


@pytest.mark.parametrize("skip", [False, True])
def test_golden_decode_of_random_ids(tok, golden, skip):
    """HF's decode of random id runs: specials, ids past the vocab, byte tokens forming broken UTF-8."""
    ids, offsets = golden["decode_ids"], golden["decode_offsets"]
    expected = json.loads(str(golden["decode_text_skip" if skip else "decode_text"]))
    got = [
        tok.decode(ids[offsets[i] : offsets[i + 1]], skip_special_tokens=skip)
        for i in range(len(expected))
    ]
    assert got == expected


# ------------------------------------------------------------------------------------------------
# the pre-tokenizer and the twins
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("don't stop", ["don't", " stop"]),
        ("state-of-the-art", ["state-of-the-art"]),
        ("a  b", ["a", " ", " b"]),
        ("x\n\ny", ["x", "\n\n", "y"]),
        ("Hello...", ["Hello", "..."]),
        ("(hello)", ["(", "hello", ")"]),
        ("3.14", ["3", ".", "14"]),
        ("你好，世界。", ["你好", "，", "世界", "。"]),
        ("a|b", ["a", "|", "b"]),
        ("a\x1cb", ["a\x1cb"]),  # U+001C is not White_Space for Oniguruma (it is for Python's \s)
        ("a\x85b", ["a", "\x85", "b"]),  # NEL is
        ("a\u180eb", ["a\u180eb"]),  # Mongolian vowel separator is not (since Unicode 6.3)
        ("  x ", [" ", " x", " "]),
        ("", []),
    ],
)
def test_split_pieces(text, pieces):
    assert split_pieces(text) == pieces


def test_merge_table_twins_agree(tok):
    with numba_switch(True):
        fast = bpe.build_tables(tok._bpe.byte_ids, tok._bpe.merges)
    with numba_switch(False):
        plain = bpe.build_tables(tok._bpe.byte_ids, tok._bpe.merges)
    for name in ("pair_table", "byte_pairs"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(plain, name), err_msg=name)


def test_numba_equals_plain_on_one_long_string(tok, corpus):
    """The whole corpus as one string: tens of thousands of distinct pieces, so the numba piece
    cache evicts, and pieces of hundreds of bytes, so the heap merge (long pieces) runs."""
    text = "\n".join(corpus) + " " + "x" * 5000
    with numba_switch(True):
        fast = tok.encode(text)
    with numba_switch(False):
        plain = tok.encode(text)
    assert fast == plain


def test_encode_batch_equals_encode_one_by_one(tok, corpus):
    """encode_batch runs all texts through one kernel call: pieces must not cross text boundaries."""
    texts = corpus[:200] + ["", "a", " ", "</s>"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_added_tokens_never_reach_across_texts(tok):
    """encode_batch joins the texts into one buffer: '<' + 's>' must not become the token <s>."""
    texts = ["a<", "s>b", "</", "s>", "<pad", ">"]
    assert tok.encode("a<s>b") != tok.encode("a<") + tok.encode("s>b")
    for numba in (True, False):
        with numba_switch(numba):
            assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
            assert tok.encode_batch([]) == []


@pytest.mark.parametrize("enabled", [True, False])
def test_encode_batch_leaves_the_garbage_collector_as_it_was(tok, enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        tok.encode_batch(["one text", "another"])
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_dense_byte_pair_table_matches_the_merges(tok):
    """byte_pairs[b1 << 8 | b2] is the packed merge of the two byte tokens, or NO_MERGE."""
    t = bpe.build_tables(tok._bpe.byte_ids, tok._bpe.merges)
    for b1 in range(256):
        for b2 in range(256):
            hit = tok._bpe.merges.get((int(t.byte_ids[b1]), int(t.byte_ids[b2])))
            expected = bpe.NO_MERGE if hit is None else bpe.pack_merge(*hit)
            assert t.byte_pairs[b1 << 8 | b2] == expected, (b1, b2)


def test_merge_tables_reject_ids_past_31_bits():
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"aa": 2**31})  # the fast twin packs ids into 31 bits: such an id never loads
    with pytest.raises(TokenizerError, match="largest id 2147483648"):
        BloomTokenizer(vocab, [("a", "a")], added_tokens=[])
    with pytest.raises(TokenizerError, match="below 2"):  # and the packer refuses it too
        bpe.build_tables(np.arange(256), {(0, 1): (0, 2**31)})


def test_bpe_tie_goes_to_leftmost_and_lowest_rank_first():
    """Toy merges with a known answer: 'aaa' -> 'aa a' (leftmost), rank beats position."""
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"aa": 256, "bc": 257, "ab": 258, "abc": 259})
    merges = [("a", "a"), ("b", "c"), ("a", "b"), ("a", "bc")]
    t = BloomTokenizer(vocab, merges, added_tokens=[])
    for numba in (True, False):
        with numba_switch(numba):
            assert t.encode("aaa") == [256, ord("a")]
            assert t.encode("abc") == [259]  # b c (rank 1) merges before a b (rank 2)
            assert t.encode("aabc") == [256, 257]


def test_long_pieces_merge_like_short_ones():
    """Pieces past bpe.LONG_PIECE bytes take the heap path: same ties (leftmost) and rank order."""
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"aa": 256, "bc": 257, "ab": 258, "abc": 259, "aaaa": 260})
    merges = [("a", "a"), ("b", "c"), ("a", "b"), ("a", "bc"), ("aa", "aa")]
    t = BloomTokenizer(vocab, merges, added_tokens=[])
    for n in (bpe.LONG_PIECE - 1, bpe.LONG_PIECE + 1, 301):
        for text in ("a" * n, ("aabc" * n)[:n], ("abcab" * n)[:n]):
            with numba_switch(False):
                plain = t.encode(text)
            with numba_switch(True):
                assert t.encode(text) == plain, (n, text[:12])
    assert t.encode("a" * (bpe.LONG_PIECE + 3)) == [260] * ((bpe.LONG_PIECE + 3) // 4) + [
        256,
        ord("a"),
    ]


@HYPOTHESIS
@given(
    text=st.text(
        alphabet=st.sampled_from(list("aeinrstx\u00e9\u00fc\u6f22\u5b57")),
        min_size=60,
        max_size=400,
    )
)
def test_numba_equals_plain_on_long_pieces(tok, text):
    with numba_switch(True):
        fast = tok.encode(text)
    with numba_switch(False):
        plain = tok.encode(text)
    assert fast == plain


# Text generators aimed at the pre-tokenizer's corners, used by several property tests.
_TRICKY = (
    list(SPLIT_EXCLUDED)
    + list("'-:;\"/_@#<>s/padunk")
    + ["<s>", "</s>", "<pad>", "<unk>", "\x1c", "\x1f", "\u180e", "\u200b"]
)
tricky_text = st.lists(st.one_of(st.sampled_from(_TRICKY), st.text(max_size=4)), max_size=30).map(
    "".join
)
any_text = st.one_of(
    st.text(max_size=60), tricky_text, st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
)


@HYPOTHESIS
@given(text=any_text)
def test_numba_equals_plain(tok, text):
    with numba_switch(True):
        fast = tok.encode(text)
    with numba_switch(False):
        plain = tok.encode(text)
    assert fast == plain


@HYPOTHESIS
@given(text=any_text)
def test_decode_encode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------------------------------------
# live parity with HF tokenizers
# ------------------------------------------------------------------------------------------------


@requires_tokenizers
@HYPOTHESIS
@given(text=any_text)
def test_live_parity_random_text(tok, hf_tok, text):
    assert tok.encode(text) == hf_tok.encode(text).ids


@requires_tokenizers
@HYPOTHESIS
@given(ids=st.lists(st.integers(0, 8100), max_size=20), skip=st.booleans())
def test_live_parity_decode(tok, hf_tok, ids, skip):
    assert tok.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)


@pytest.fixture(scope="module")
def added_pair(tmp_path_factory):
    """(minibloom, HF) tokenizers with added tokens beyond BLOOM's four: overlapping contents,
    special and not, normalized or not."""
    from tokenizers import AddedToken, Tokenizer

    hf = Tokenizer.from_file(str(golden_path("tokenizer.json")))
    hf.add_tokens(
        [AddedToken("ab<x>", special=False), AddedToken("é<x>", special=False, normalized=False)]
    )
    hf.add_special_tokens([AddedToken("<x>", special=True), AddedToken("<x><s>", special=True)])
    path = tmp_path_factory.mktemp("added") / "tokenizer.json"
    hf.save(str(path))
    return BloomTokenizer.from_file(path), Tokenizer.from_file(str(path))


@requires_tokenizers
@HYPOTHESIS
@given(
    text=st.lists(
        st.sampled_from(["ab", "<x>", "é<x>", "ab<x>", "<s>", "s>", " ", "c", "\n", "<x><s>"]),
        max_size=20,
    ).map("".join)
)
def test_live_parity_extra_added_tokens(added_pair, text):
    mine, hf = added_pair
    assert mine.encode(text) == hf.encode(text).ids
    ids = hf.encode(text).ids
    assert mine.decode(ids) == hf.decode(ids, skip_special_tokens=False)
    assert mine.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------
# the API
# ------------------------------------------------------------------------------------------------


def test_api_names(tok):
    assert (tok.unk_token_id, tok.start_token_id, tok.end_token_id, tok.pad_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.vocabulary_size() == 8000
    assert tok.id_to_token(2) == "</s>" and tok.token_to_id("</s>") == 2
    assert (
        tok.token_to_id("Ġworld") is not None
        and tok.id_to_token(tok.token_to_id("Ġworld")) == "Ġworld"
    )
    assert tok.id_to_token(10**6) is None and tok.token_to_id("not a token") is None
    ids = tok("Hello world</s>")
    assert ids == tok.encode("Hello world</s>") and ids[-1] == 2
    assert tok(["a b", "c"]) == tok.encode_batch(["a b", "c"])
    assert tok.detokenize(ids) == "Hello world</s>"
    assert tok.detokenize([ids, tok.encode("x")]) == ["Hello world</s>", "x"]
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world"
    assert tok.decode_batch([ids, []]) == ["Hello world</s>", ""]
    assert "".join(tok.pieces("a world")) == "aĠworld"


def test_ids_past_the_vocabulary_decode_to_nothing(tok):
    """BLOOM's embedding has 200 more rows than tokens: a sampled unused id must not crash decode."""
    assert tok.decode([tok.vocabulary_size(), 250879, tok.token_to_id("x")]) == "x"
    assert tok.decode(np.array([5, 250000], dtype=np.int32)) == tok.decode([5])


def test_bad_arguments(tok):
    with pytest.raises(ArgumentError, match="ids must be >= 0"):
        tok.decode([-1])
    with pytest.raises(ArgumentError, match="1-D"):
        tok.decode([[1, 2], [3, 4]])
    with pytest.raises(ArgumentError, match="must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ArgumentError, match="lone surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ArgumentError, match="single str"):
        tok.encode_batch("abc")


# ------------------------------------------------------------------------------------------------
# files: save / load round trips and bad files
# ------------------------------------------------------------------------------------------------


def test_tokenizer_json_round_trip(tok, corpus, tmp_path):
    path = tok.save(tmp_path)  # merges written as "a b" strings (the golden file has pairs)
    assert path == tmp_path / "tokenizer.json"
    assert isinstance(json.loads(path.read_text(encoding="utf-8"))["model"]["merges"][0], str)
    again = BloomTokenizer.from_file(path)
    assert again.encode_batch(corpus[::7]) == tok.encode_batch(corpus[::7])
    assert BloomTokenizer.from_preset(tmp_path).encode("x y") == tok.encode("x y")
    assert not list(tmp_path.glob("*.tmp"))


def test_keras_assets_round_trip(tok, corpus, tmp_path):
    vocab_path, merges_path = tok.save_keras_assets(tmp_path / "assets" / "tokenizer")
    assert json.loads(vocab_path.read_text(encoding="utf-8"))["</s>"] == 2
    assert merges_path.read_text(encoding="utf-8").split("\n")[0] == " ".join(tok._merges[0])
    again = BloomTokenizer.from_preset(tmp_path)  # finds assets/tokenizer/
    assert again.encode_batch(corpus[::7]) == tok.encode_batch(corpus[::7])
    assert (again.start_token_id, again.end_token_id, again.pad_token_id) == (1, 2, 3)
    assert again.encode("<unk>x") == tok.encode("<unk>x")  # <unk> matched like HF (keras does not)


@requires_tokenizers
def test_hf_loads_our_saved_file(tok, corpus, tmp_path):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tok.save(tmp_path / "tokenizer.json")))
    assert [e.ids for e in hf.encode_batch(corpus[::5])] == tok.encode_batch(corpus[::5])


def _mutated(tmp_path, change):
    spec = json.loads(golden_path("tokenizer.json").read_text(encoding="utf-8"))
    change(spec)
    path = tmp_path / "bad_tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def _set(keys, value):
    def change(spec):
        node = spec
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set(["normalizer"], {"type": "NFC"}), "normalizer should be null"),
        (
            _set(
                ["pre_tokenizer"],
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
            ),
            "pre_tokenizer should be",
        ),
        (
            _set(["pre_tokenizer", "pretokenizers", 0, "pattern"], {"Regex": " ?[^\\s]+"}),
            "pre_tokenizer's Split",
        ),
        (
            _set(["pre_tokenizer", "pretokenizers", 0, "pattern"], {"String": " "}),
            "pre_tokenizer's Split",
        ),
        (
            _set(["pre_tokenizer", "pretokenizers", 0, "behavior"], "Removed"),
            "pre_tokenizer's Split",
        ),
        (_set(["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"], True), "ByteLevel"),
        (_set(["pre_tokenizer", "pretokenizers", 1, "use_regex"], True), "ByteLevel"),
        (_set(["post_processor"], {"type": "TemplateProcessing"}), "post_processor"),
        (_set(["decoder"], None), "decoder should be ByteLevel"),
        (_set(["model", "type"], "WordPiece"), "model should be BPE"),
        (_set(["model", "dropout"], 0.1), "model.dropout"),
        (_set(["model", "ignore_merges"], True), "model.ignore_merges"),
        (_set(["model", "byte_fallback"], True), "model.byte_fallback"),
        (_set(["model", "merges", 0], "a b c"), r"model.merges\[0\]"),
        (_set(["model", "merges", 0], ["Ġ", "zzzz"]), "merge 0 .* not in model.vocab"),
        (_set(["truncation"], {"max_length": 5}), "truncation"),
        (_set(["added_tokens", 1, "lstrip"], True), "'lstrip' is true"),
        (_set(["added_tokens", 1, "id"], 7), "id 7 differs"),
        (_set(["model", "vocab", "Ġ"], 0), "same id"),
    ],
)
def test_bad_files_name_the_file_and_the_part(tmp_path, change, message):
    path = _mutated(tmp_path, change)
    with pytest.raises(TokenizerError, match=message) as err:
        BloomTokenizer.from_file(path)
    assert str(path) in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        BloomTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="broken.json: invalid JSON"):
        BloomTokenizer.from_file(tmp_path / "broken.json")
    (tmp_path / "vocabulary.json").write_text('{"a": 0}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="merges.txt, line 1: expected two tokens"):
        BloomTokenizer.from_preset(tmp_path)
