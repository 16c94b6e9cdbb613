"""Fuzzing the file loaders with hypothesis (issue 7).

Every test starts from a valid file (a tiny safetensors checkpoint, a sharded index, a
tokenizer.json, a config.json), mutates it (flipped bits, truncation, inserted / deleted /
overwritten bytes, or an edited JSON value at a random place in the header or document) and
loads the result. The property: the load ends in a `MinibloomError`, or succeeds with a result
that works (arrays of the declared shapes equal to what the reference `safetensors` reader sees,
a tokenizer that encodes and decodes, a config that round-trips). Anything else (a numpy /
json / struct exception, a hang past the hypothesis `deadline`, more than _MAX_ALLOC bytes
allocated) fails the test.

The number of examples per test is fixed (derandomize=True, so CI runs the same cases every
time); `FUZZ_CASES` adds them up for docs/RELIABILITY.md
(`python -c "import sys; sys.path[:0] = ['tests']; import test_fuzz_loaders as t; print(t.FUZZ_CASES)"`).
"""

import json
import math
import tempfile
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from minibloom.config import BloomConfig
from minibloom.errors import MinibloomError
from minibloom.io.checkpoint import INDEX_FILE, load_params, save_params
from minibloom.io.safetensors import read_safetensors, write_safetensors
from minibloom.model import init_params
from minibloom.tokenizer import BloomTokenizer
from minibloom.training.bpe_train import train_tokenizer

TINY = BloomConfig(vocab_size=40, hidden_size=12, n_layer=2, n_head=3)
_MAX_ALLOC = 64 << 20  # no fuzzed file is bigger than a few kB: 64 MB means something was believed
EXAMPLES = {
    "bytes": 500,
    "header": 500,
    "index": 150,
    "tokenizer_json": 300,
    "tokenizer_bytes": 100,
    "config": 500,
}
FUZZ_CASES = sum(EXAMPLES.values())


def _fuzz(name):
    return settings(
        max_examples=EXAMPLES[name],
        deadline=timedelta(
            seconds=10
        ),  # generous (a shared, loaded machine); a hang still trips it
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _bounded(load):
    """Run load(); return (result or None, error or None); fail on a huge allocation."""
    tracemalloc.start()
    try:
        try:
            result = load()
            event("loaded")  # `pytest --hypothesis-show-statistics` shows the mix of outcomes
            return result, None
        except MinibloomError as e:
            assert str(e), "an error must say what is wrong"
            event(f"refused: {type(e).__name__}")
            return None, e
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < _MAX_ALLOC, f"the load allocated {peak} bytes"
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    """One to three of: flip a bit, truncate, insert, delete, or overwrite bytes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[pos : pos + len(chunk)] = chunk
    return bytes(out)


# JSON values a hostile file might hold: huge and negative numbers, wrong types, traversal strings.
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 1, 2**31, 2**40, 2**63, 2**64, 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        ["../x.safetensors", "/etc/passwd", "F32", "BF16", "I64", "BPE", "ByteLevel", "bloom", "Ġ"]
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree, the root excluded."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


@st.composite
def json_edit(draw, doc, paths):
    """Replace the value at a random path with a random JSON value, or delete it."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(paths))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if draw(st.integers(0, 5)) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_value)
    return doc


# ------------------------------------------------------------------------------------------------
# the valid starting files
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_base")
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": np.arange(5, dtype=np.float32),
        "c": np.ones(0, np.float32),  # an empty tensor: zero bytes, offsets [n, n]
    }
    write_safetensors(d / "small.safetensors", tensors, dtype="F32")
    params = {
        k: rng.standard_normal(v.shape).astype(np.float32) for k, v in init_params(TINY).items()
    }
    save_params(d / "sharded", params, max_shard_bytes=1500)
    tok = train_tokenizer(
        ["hello world, hello minibloom", "fuzzing loaders is fun", "héllo wörld 123"] * 3,
        vocab_size=290,
    )
    tok.save(d / "tokenizer.json")
    return {
        "st": (d / "small.safetensors").read_bytes(),
        "index": json.loads((d / "sharded" / INDEX_FILE).read_text()),
        "sharded": d / "sharded",
        "tokenizer": json.loads((d / "tokenizer.json").read_text(encoding="utf-8")),
        "config": TINY.to_dict(),
    }


def _reference(path):
    """The reference safetensors reader's view of a file, or None when it refuses the file."""
    try:
        return safetensors.numpy.load_file(str(path))
    except Exception:  # the reference library's own error types; only its verdict matters here
        return None


def _check_safetensors(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzzed.safetensors"
        path.write_bytes(data)
        got, err = _bounded(lambda: read_safetensors(path))
        if err is not None:
            assert "fuzzed.safetensors" in str(err)
        ref = _reference(path)
        if ref is not None:  # the reference reads it: so must we, to the same arrays
            assert err is None, f"the reference reader accepts this file but minibloom says: {err}"
            assert sorted(got) == sorted(ref)
            for name, (dtype, words) in got.items():
                assert words.shape == ref[name].shape
                assert words.tobytes() == ref[name].tobytes(), name
        elif got is not None:  # we are more lenient (e.g. gaps between tensors): still consistent
            for name, (dtype, words) in got.items():
                assert words.dtype.itemsize * words.size == words.nbytes


@_fuzz("bytes")
@given(data=st.data())
def test_fuzz_safetensors_bytes(base, data):
    _check_safetensors(data.draw(byte_mutation(base["st"])))


@_fuzz("header")
@given(data=st.data())
def test_fuzz_safetensors_header_values(base, data):
    n = int.from_bytes(base["st"][:8], "little")
    header = json.loads(base["st"][8 : 8 + n])
    edited = data.draw(json_edit(header, list(_paths(header))))
    raw = json.dumps(edited).encode()
    _check_safetensors(len(raw).to_bytes(8, "little") + raw + base["st"][8 + n :])


@_fuzz("index")
@given(data=st.data())
def test_fuzz_sharded_index(base, data):
    index = base["index"]
    edited = data.draw(json_edit(index, list(_paths(index))))
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "ckpt"
        ckpt.mkdir()
        for f in base["sharded"].glob("model-*.safetensors"):
            (ckpt / f.name).write_bytes(f.read_bytes())
        (ckpt / INDEX_FILE).write_text(json.dumps(edited))
        params, err = _bounded(lambda: load_params(ckpt, TINY))
    if err is not None:
        assert INDEX_FILE in str(err) or "ckpt" in str(err) or "tensor" in str(err)
    else:
        for k, v in params.items():
            assert v.dtype == np.float32 and np.isfinite(v).all(), k


def _check_tokenizer(text: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        tok, err = _bounded(lambda: BloomTokenizer.from_file(path))
    if err is not None:
        assert "tokenizer.json" in str(err)
        return
    # a tokenizer that loads must work: ids in range, decode of encode gives text back
    sample = "hello wörld <s> fuzz 123"
    ids = tok.encode(sample)
    assert all(0 <= i < tok.vocabulary_size() for i in ids)
    assert isinstance(tok.decode(ids), str)


@_fuzz("tokenizer_json")
@given(data=st.data())
def test_fuzz_tokenizer_json_values(base, data):
    spec = base["tokenizer"]
    # edit the structure and a sample of the vocab/merges (all 500 entries would dilute the rest)
    paths = [p for p in _paths(spec) if not (len(p) > 2 and p[1] in ("vocab", "merges"))]
    paths += [("model", "vocab", k) for k in list(spec["model"]["vocab"])[::25]]
    paths += [("model", "merges", i) for i in range(0, len(spec["model"]["merges"]), 5)]
    _check_tokenizer(json.dumps(data.draw(json_edit(spec, paths)), ensure_ascii=False))


@_fuzz("tokenizer_bytes")
@given(data=st.data())
def test_fuzz_tokenizer_json_bytes(base, data):
    raw = json.dumps(base["tokenizer"], ensure_ascii=False).encode("utf-8")
    # flips concentrate on the small head of the file (pipeline description), not only the vocab
    head = data.draw(byte_mutation(raw[:1500]))
    _check_tokenizer((head + raw[1500:]).decode("utf-8", errors="surrogateescape"))


@_fuzz("config")
@given(data=st.data())
def test_fuzz_config(base, data):
    edited = data.draw(json_edit(base["config"], list(_paths(base["config"]))))
    text = json.dumps(edited)
    if data.draw(st.booleans()):
        text = data.draw(byte_mutation(text.encode())).decode("utf-8", errors="replace")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(text, encoding="utf-8")
        config, err = _bounded(lambda: BloomConfig.from_json_file(path))
    if err is not None:
        assert "config.json" in str(err)
        return
    assert (
        config.hidden_size % config.n_head == 0
        and min(config.vocab_size, config.n_layer, config.head_dim) > 0
    )
    assert math.isfinite(config.layer_norm_epsilon)
    assert BloomConfig.from_dict(config.to_dict()) == config  # what loads also round-trips
