"""Hostile and broken input files, and the security rules (issue 7, file-loading half).

Each test feeds one kind of bad file or name to a loader and checks that it ends in a clean
`MinibloomError` subclass whose message names the file and the part at fault (never a numpy,
json or struct traceback, never a huge allocation). docs/RELIABILITY.md lists every case with
the test that proves it. The random counterpart is tests/test_fuzz_loaders.py.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, golden_path

from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import (
    ArgumentError,
    CheckpointError,
    ConfigError,
    PresetNotFoundError,
    TokenizerError,
)
from minibloom.io.checkpoint import INDEX_FILE, load_params, save_params
from minibloom.io.presets import resolve
from minibloom.io.safetensors import read_header, read_safetensors, write_safetensors
from minibloom.model import BloomBackbone, init_params
from minibloom.tokenizer import BloomTokenizer

TINY = BloomConfig(vocab_size=40, hidden_size=12, n_layer=2, n_head=3)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(v.shape).astype(np.float32) for k, v in init_params(TINY).items()
    }


def _raw(path, header, data=b"", length=None):
    """Write a safetensors file by hand: 8-byte length, header bytes (or JSON of `header`), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# ------------------------------------------------------------------------------------------------
# safetensors: the container
# ------------------------------------------------------------------------------------------------


def test_truncated_file_at_every_length(tmp_path):
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 3), np.float32)})
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(len(data)):  # every prefix shorter than the file
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="cut.safetensors"):
            read_safetensors(cut)


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 100 * 2**20 + 1, 10**6])
def test_header_length_too_large_is_never_allocated(tmp_path, length):
    path = _raw(tmp_path / "big.safetensors", {"w": _entry()}, b"\0" * 8, length=length)
    tracemalloc.start()
    try:
        with pytest.raises(
            CheckpointError, match=r"big.safetensors: header length \d+ does not fit"
        ):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"refusing the header allocated {peak} bytes"


@pytest.mark.parametrize(
    "header, message",
    [
        (b"{nope", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),  # not UTF-8
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"w": ' + b"9" * 5000 + b"}", "not valid JSON"),  # int beyond Python's digit limit
        (b'"a string"', "must be a JSON object, found str"),
        (b"null", "must be a JSON object, found NoneType"),
        (b'{"__metadata__": [1, 2]}', "__metadata__ must be a JSON object"),
    ],
)
def test_header_not_json_or_not_an_object(tmp_path, header, message):
    path = _raw(tmp_path / "h.safetensors", header)
    with pytest.raises(CheckpointError, match=message) as e:
        read_header(path)
    assert "h.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("just a string", "needs dtype, shape and data_offsets"),
        ({"dtype": "F32", "shape": [2]}, "needs dtype, shape and data_offsets"),
        (_entry(dtype="I64"), "dtype 'I64'"),
        (_entry(dtype=["F32"]), r"dtype \['F32'\]"),  # unhashable: must not be a TypeError
        (_entry(dtype=None), "dtype None"),
        (_entry(shape=(-2,)), "invalid shape"),
        (_entry(shape=(True, 2)), "invalid shape"),
        (_entry(shape=(2.0,)), "invalid shape"),
        (_entry(shape=[1] * 40, offsets=(0, 4)), "invalid shape"),
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "invalid shape"),
        (_entry(shape=(2**40,)), "needs 4398046511104 bytes"),
        (_entry(shape=(2**48, 2**48)), "needs"),  # int64 overflow territory: Python ints, no wrap
        (_entry(shape=(2**49,)), "invalid shape"),
        (_entry(offsets=(0, 12)), "needs 8 bytes"),
        (_entry(offsets=(8, 0)), "data_offsets"),
        (_entry(offsets=(-8, 0)), "data_offsets"),
        (_entry(offsets=(0, 8, 16)), "data_offsets"),
        (_entry(offsets=(0.0, 8.0)), "data_offsets"),
        (_entry(offsets=(4, 12)), "within a 8-byte data section"),
    ],
)
def test_bad_tensor_entries_are_named(tmp_path, entry, message):
    path = _raw(tmp_path / "t.safetensors", {"weight": entry}, b"\0" * 8)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=message) as e:
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "t.safetensors" in str(e.value) and "'weight'" in str(e.value)
    assert peak < 1 << 20, f"rejecting the entry allocated {peak} bytes"


def test_overlapping_tensors_are_refused(tmp_path):
    header = {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}
    path = _raw(tmp_path / "o.safetensors", header, b"\0" * 12)
    with pytest.raises(CheckpointError, match="tensors 'a' and 'b' overlap"):
        read_header(path)
    # touching but not overlapping, and empty tensors anywhere, are fine
    header = {
        "a": _entry(offsets=(0, 8)),
        "b": _entry(offsets=(8, 16)),
        "e": _entry(shape=(0,), offsets=(4, 4)),
    }
    tensors = read_safetensors(_raw(tmp_path / "ok.safetensors", header, b"\0" * 16))
    assert tensors["e"][1].shape == (0,) and tensors["b"][1].shape == (2,)


# ------------------------------------------------------------------------------------------------
# safetensors: non-finite weights
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_policy(tmp_path, stored, bad):
    params = _params()
    params["h.1.mlp.dense_4h_to_h.weight"][3, 5] = bad
    save_params(tmp_path, params, dtype=stored)
    with pytest.raises(
        CheckpointError,
        match=r"'h.1.mlp.dense_4h_to_h.weight' holds non-finite values .* index \(3, 5\)",
    ):
        load_params(tmp_path, TINY)
    with pytest.warns(RuntimeWarning, match="h.1.mlp.dense_4h_to_h.weight"):
        loaded = load_params(tmp_path, TINY, nonfinite="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignored = load_params(tmp_path, TINY, nonfinite="ignore", dtype="float16")
    for got in (loaded, ignored):
        value = got["h.1.mlp.dense_4h_to_h.weight"][3, 5]
        assert np.isnan(value) if np.isnan(bad) else value == bad


def test_nonfinite_policy_argument_is_checked(tmp_path):
    save_params(tmp_path, _params())
    with pytest.raises(ArgumentError, match="nonfinite: expected one of"):
        load_params(tmp_path, TINY, nonfinite="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean checkpoint loads silently under every policy
        for policy in ("error", "warn", "ignore"):
            load_params(tmp_path, TINY, nonfinite=policy)


# ------------------------------------------------------------------------------------------------
# sharded checkpoints: the index
# ------------------------------------------------------------------------------------------------


def _sharded(tmp_path):
    d = tmp_path / "ckpt"
    save_params(d, _params(), max_shard_bytes=2000)
    return d, json.loads((d / INDEX_FILE).read_text())


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "index.json: invalid JSON"),
        ("[" * 50_000, "nested too deeply"),
        ("[1, 2]", "non-empty 'weight_map'"),
        ('{"metadata": {}}', "non-empty 'weight_map'"),
        ('{"weight_map": ["a"]}', "non-empty 'weight_map'"),
        ('{"weight_map": {}}', "non-empty 'weight_map'"),
        (
            '{"weight_map": {"ln_f.bias": 3}}',
            r"weight_map\['ln_f.bias'\] should be a shard file name",
        ),
        ('{"weight_map": {"ln_f.bias": ["x"]}}', "should be a shard file name"),
    ],
)
def test_index_not_json_or_without_weight_map(tmp_path, text, message):
    d, _ = _sharded(tmp_path)
    (d / INDEX_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=message) as e:
        load_params(d, TINY)
    assert INDEX_FILE in str(e.value)


@pytest.mark.parametrize(
    "shard",
    [
        "../outside.safetensors",
        "/tmp/outside.safetensors",
        "sub/../outside.safetensors",
        "sub/x.safetensors",
        "..\\outside.safetensors",
        "x\0.safetensors",
        "model.safetensors\n",
        "model.bin",
        ".hidden.safetensors",
    ],
)
def test_index_naming_a_shard_outside_the_directory(tmp_path, shard):
    d, index = _sharded(tmp_path)
    (tmp_path / "outside.safetensors").write_bytes(
        (d / sorted(set(index["weight_map"].values()))[0]).read_bytes()
    )
    index["weight_map"]["ln_f.bias"] = shard
    (d / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"is not a plain \*\.safetensors file name"):
        load_params(d, TINY)


def test_index_shard_symlink_escaping_the_directory(tmp_path):
    d, index = _sharded(tmp_path)
    first = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(d / first, outside)
    (d / first).symlink_to(outside)
    with pytest.raises(CheckpointError, match=f"shard '{first}' is a symlink leading outside"):
        load_params(d, TINY)
    # a symlink inside the directory is fine
    os.replace(outside, d / "real.safetensors")
    (d / first).unlink()
    (d / first).symlink_to("real.safetensors")
    load_params(d, TINY)


def test_hf_cache_snapshot_symlinks_into_blobs_are_allowed(tmp_path):
    """The HF hub cache stores files as snapshots/<rev>/name -> ../../blobs/<hash>."""
    src, index = _sharded(tmp_path)
    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for n, f in enumerate(sorted(src.iterdir())):
        os.replace(f, blobs / f"hash{n}")
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f"hash{n}"))
    params = load_params(snap, TINY)
    np.testing.assert_array_equal(params["ln_f.bias"], _params()["ln_f.bias"])


def test_index_naming_a_missing_shard(tmp_path):
    d, index = _sharded(tmp_path)
    index["weight_map"]["ln_f.bias"] = "model-00099-of-00099.safetensors"
    (d / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match="lists shard 'model-00099-of-00099.safetensors', which is missing"
    ):
        load_params(d, TINY)


def test_pytorch_bin_only_is_never_unpickled(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 would run code if unpickled")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_params(tmp_path, TINY)


# ------------------------------------------------------------------------------------------------
# tokenizer.json, vocabulary.json, merges.txt
# ------------------------------------------------------------------------------------------------


def _tok_spec():
    return json.loads(golden_path("tokenizer.json").read_text(encoding="utf-8"))


def _write_spec(tmp_path, spec):
    path = tmp_path / "tokenizer.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec), encoding="utf-8")
    return path


def _edit(fn):
    def apply():
        spec = _tok_spec()
        fn(spec)
        return spec

    return apply


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: "{not json", "tokenizer.json: invalid JSON"),
        (lambda: "[" * 50_000, "nested too deeply"),
        (lambda: '{"model": ' + "1" * 5000 + "}", "tokenizer.json: invalid JSON"),
        (lambda: [], "no 'model' key"),
        (_edit(lambda s: s.pop("model")), "no 'model' key"),
        (_edit(lambda s: s.pop("decoder")), "decoder should be ByteLevel"),
        (_edit(lambda s: s.pop("pre_tokenizer")), "pre_tokenizer should be"),
        (_edit(lambda s: s.update(post_processor=["ByteLevel"])), "post_processor should be"),
        (_edit(lambda s: s.update(model=[1])), "model should be BPE"),
        (_edit(lambda s: s["model"].pop("vocab")), "vocab must be an object"),
        (_edit(lambda s: s["model"].update(vocab=["a", "b"])), "vocab must be an object"),
        (_edit(lambda s: s["model"]["vocab"].update({"Ġthe": -1})), "ids >= 0, found 'Ġthe': -1"),
        (_edit(lambda s: s["model"]["vocab"].update({"Ġthe": True})), "ids >= 0"),
        (_edit(lambda s: s["model"]["vocab"].update({"Ġthe": "7"})), "ids >= 0"),
        (_edit(lambda s: s["model"]["vocab"].update({"": 9000})), "non-empty token strings"),
        (_edit(lambda s: s["model"]["vocab"].update({"Ġthe": 5})), "same id 5"),
        (
            _edit(lambda s: s["model"]["vocab"].update({"Ġzzz": 10**12})),
            "largest id 1000000000000 is far above",
        ),
        (_edit(lambda s: s["model"].update(merges="Ġ t")), "model.merges should be a list"),
        (_edit(lambda s: s["model"].update(merges=7)), "model.merges should be a list"),
        (
            _edit(lambda s: s["model"]["merges"].append("Ġ nosuchtoken")),
            "uses 'nosuchtoken', which is not in model.vocab",
        ),
        (
            _edit(lambda s: s["model"]["merges"].append(["Ġ", 3])),
            r'model.merges\[7740\] should be "a b"',
        ),
        (
            _edit(lambda s: s.update(added_tokens={"a": 1})),
            "added_tokens should be a list of objects",
        ),
        (
            _edit(lambda s: s["added_tokens"].append({"content": "<x>", "id": -3})),
            "'<x>'.*integer 'id' >= 0",
        ),
        (
            _edit(lambda s: s["added_tokens"].append({"content": "<x>", "id": False})),
            "integer 'id' >= 0",
        ),
        (
            _edit(lambda s: s["added_tokens"].append({"content": "<x>", "id": 10})),
            "id 10 is given to two tokens",
        ),
        (
            _edit(lambda s: s["added_tokens"].append({"content": 5, "id": 9000})),
            "non-empty string 'content'",
        ),
    ],
)
def test_bad_tokenizer_json(tmp_path, make, message):
    path = _write_spec(tmp_path, make())
    with pytest.raises(TokenizerError, match=message) as e:
        BloomTokenizer.from_file(path)
    assert "tokenizer.json" in str(e.value)


def test_tokenizer_file_missing_or_a_directory(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        BloomTokenizer.from_file(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match="not a regular file"):
        BloomTokenizer.from_file(tmp_path)


def test_pipes_and_directories_are_refused_without_blocking(tmp_path):
    """A named pipe would block a read forever: every loader checks for a regular file first."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="fifo: not a regular file"):
        read_safetensors(fifo)
    with pytest.raises(ConfigError, match="fifo: not a regular file"):
        BloomConfig.from_json_file(fifo)
    with pytest.raises(TokenizerError, match="fifo: not a regular file"):
        BloomTokenizer.from_file(fifo)
    with pytest.raises(TokenizerError, match="fifo: not a regular file"):
        BloomTokenizer.from_keras_assets(fifo, fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        BloomConfig.from_json_file(tmp_path)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_safetensors(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.mkfifo(ckpt / INDEX_FILE)
    with pytest.raises(CheckpointError, match="index.json: not a regular file"):
        load_params(ckpt, TINY)


def _keras_assets(tmp_path):
    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    return tok.save_keras_assets(tmp_path)


@pytest.mark.parametrize(
    "vocab_text, merges_text, message",
    [
        ("{oops", None, "vocabulary.json: invalid JSON"),
        ("[1, 2, 3]", None, "vocabulary.json: vocab must be an object"),
        ('{"a": 1, "b": 1}', None, "same id 1"),
        (None, "Ġ t\nthree parts here\n", r"merges.txt, line 2: expected two tokens"),
        (None, "Ġ  t\n", r"merges.txt, line 1: expected two tokens"),
        (None, "Ġ nosuchtoken\n", "uses 'nosuchtoken', which is not in model.vocab"),
        (None, b"\xff\xfe\n", "merges.txt: not a readable merges file"),
    ],
)
def test_bad_keras_assets(tmp_path, vocab_text, merges_text, message):
    vocab_path, merges_path = _keras_assets(tmp_path)
    if vocab_text is not None:
        vocab_path.write_text(vocab_text, encoding="utf-8")
    if isinstance(merges_text, bytes):
        merges_path.write_bytes(merges_text)
    elif merges_text is not None:
        merges_path.write_text(merges_text, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        BloomTokenizer.from_keras_assets(vocab_path, merges_path)


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------

_GOOD_CONFIG = {
    "model_type": "bloom",
    "vocab_size": 40,
    "hidden_size": 12,
    "n_layer": 2,
    "n_head": 3,
}


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"hidden_size": 10}, "hidden_size 10 is not divisible by n_head 3"),
        ({"hidden_size": 0}, "`hidden_size` must be a positive integer, found 0"),
        ({"n_layer": -1}, "`n_layer` must be a positive integer, found -1"),
        ({"n_head": 0}, "`n_head` must be a positive integer"),
        ({"vocab_size": 0}, "`vocab_size` must be a positive integer"),
        ({"vocab_size": "40"}, "`vocab_size` must be a positive integer, found '40'"),
        ({"hidden_size": 12.0}, "`hidden_size` must be a positive integer, found 12.0"),
        ({"n_layer": True}, "`n_layer` must be a positive integer, found True"),
        ({"n_head": [3]}, r"`n_head` must be a positive integer, found \[3\]"),
        (
            {"n_embed": [12]},
            "conflicting values for hidden_size / n_embed",
        ),  # unhashable: no TypeError
        ({"num_hidden_layers": 3}, "conflicting values for n_layer / num_hidden_layers"),
        ({"n_inner": -4}, "`intermediate_size` must be a positive integer"),
        ({"vocab_size": 10**9, "hidden_size": 3 * 10**6}, "parameters .* expected at most"),
        (
            {"layer_norm_epsilon": float("nan")},
            "`layer_norm_epsilon` must be a small positive number",
        ),
        ({"layer_norm_epsilon": "1e-5"}, "`layer_norm_epsilon`"),
        ({"hidden_dropout": 1.5}, r"`hidden_dropout` must be in \[0, 1\)"),
        ({"initializer_range": "0.02"}, "`initializer_range` must be a finite number"),
        ({"apply_residual_connection_post_layernorm": "yes"}, "must be true or false"),
        ({"eos_token_id": 40}, r"`eos_token_id` must be a token id in \[0, 40\)"),
        ({"model_type": "gpt2"}, "model_type is 'gpt2', expected 'bloom'"),
        ({"model_type": ["bloom"]}, "model_type must be the string 'bloom'"),
    ],
)
def test_bad_config_values(tmp_path, edit, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**_GOOD_CONFIG, **edit}, allow_nan=True))
    with pytest.raises(ConfigError, match=message) as e:
        BloomConfig.from_json_file(path)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{oops", "invalid JSON"),
        ("[" * 50_000, "nested too deeply"),
        ("[1]", "expected a JSON object, found list"),
        ('{"vocab_size": ' + "4" * 5000 + "}", "invalid JSON"),
        (b"\xff\xfe", "cannot read config"),
    ],
)
def test_config_not_json(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        BloomConfig.from_json_file(path)
    with pytest.raises(ConfigError, match="config file not found"):
        BloomConfig.from_json_file(tmp_path / "missing.json")


def test_vocab_smaller_than_the_tokenizer_is_refused(tmp_path):
    """tokenizer ids must fit in the embedding: checked when from_preset puts the two together."""
    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))  # 8000 ids
    model = tmp_path / "m"
    model.mkdir()
    small = BloomConfig(vocab_size=tok.vocabulary_size() - 1, hidden_size=12, n_layer=1, n_head=3)
    (model / "config.json").write_text(small.to_json_string())
    tok.save(model / "tokenizer.json")
    with pytest.raises(
        ConfigError, match=r"vocab_size 7999 is smaller than the tokenizer's 8000 ids"
    ):
        BloomCausalLM.from_preset(model, load_weights=False)
    ok = BloomConfig(vocab_size=tok.vocabulary_size(), hidden_size=12, n_layer=1, n_head=3)
    (model / "config.json").write_text(ok.to_json_string())
    assert BloomCausalLM.from_preset(model, load_weights=False).tokenizer.vocabulary_size() == 8000


# ------------------------------------------------------------------------------------------------
# token ids given to the model
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("numba", ["1", "0"])
@pytest.mark.parametrize(
    "ids, message",
    [
        ([[1, -1]], r"ids must be in \[0, 40\), found -1"),
        ([[40, 2]], "found 40"),
        ([[2**62, 0]], "found 4611686018427387904"),
        ([[1.0, 2.0]], "integer array"),
    ],
)
def test_out_of_range_token_ids_are_an_argument_error(monkeypatch, numba, ids, message):
    monkeypatch.setenv("MINIBLOOM_NUMBA", numba)
    bb = BloomBackbone.from_config(TINY, _params())
    ids = np.asarray(ids)
    with pytest.raises(ArgumentError, match="token_ids: .*" + message):
        bb.forward(ids, np.ones(ids.shape, bool))
    with pytest.raises(ArgumentError, match="token_ids"):
        BloomCausalLM(bb).predict({"token_ids": ids, "padding_mask": np.ones(ids.shape, bool)})


# ------------------------------------------------------------------------------------------------
# security: names validated before they touch the file system; no code from data files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../outside",
        "../../a/outside",
        "..",
        "sub/../../outside",
        "..\\outside",
        "out\0side",
        "",
        "x" * 5000,
        "y" * 300,
        "outside\n",
        "hf://../outside",
        "hf://org/../outside",
        "hf://org/name/../../x",
        "hf:///etc/passwd",
        "hf://org\\name",
        "hf://org/name\0",
        "hf://" + "o" * 200 + "/n",
        "hf://org/name\n",
    ],
)
def test_hostile_preset_names_never_escape(tmp_path, monkeypatch, name):
    """A model dir next to MINIBLOOM_HOME (`../outside`) must not be reachable by name."""
    (tmp_path / "a" / "home").mkdir(parents=True)
    (tmp_path / "a" / "outside").mkdir()
    (tmp_path / "a" / "outside" / "config.json").write_text("{}")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MINIBLOOM_HOME", str(tmp_path / "a" / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a" / "home"))
    with pytest.raises(PresetNotFoundError) as e:
        resolve(name)
    assert "\n" not in str(e.value) and "\0" not in str(e.value)


_CODE_RUNNERS = {"eval", "exec", "__import__", "compile", "breakpoint"}
_UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
    "yaml",
    "torch",
}


def _security_findings(source: str, filename: str) -> list:
    """Code-execution hazards in one Python source: builtins that run code, unsafe loaders."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Name) and node.id in _CODE_RUNNERS:
            found.append(f"{filename}:{node.lineno}: {node.id}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for m in mods:
                if (
                    m.split(".")[0] in _UNSAFE_MODULES and filename != "parity.py"
                ):  # parity.py: tool-time torch
                    found.append(f"{filename}:{node.lineno}: import {m}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("load", "loads")
        ):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if owner in ("np", "numpy"):
                safe = any(
                    k.arg == "allow_pickle"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
                if not safe:
                    found.append(f"{filename}:{node.lineno}: np.load without allow_pickle=False")
            if owner in _UNSAFE_MODULES:
                found.append(f"{filename}:{node.lineno}: {owner}.{node.func.attr}")
    return found


def test_security_scan_catches_what_it_looks_for():
    bad = textwrap.dedent(
        """
        import pickle
        from marshal import loads
        x = eval("1")
        exec("y = 2")
        np.load("a.npy")
        np.load("a.npy", allow_pickle=True)
        pickle.loads(b"")
        m = __import__("os")
        ok = np.load("a.npz", allow_pickle=False)
        model.eval()
        """
    )
    found = _security_findings(bad, "bad.py")
    assert len(found) == 8, found
    assert not any(
        ":10:" in f or ":11:" in f for f in found
    )  # the safe load and the .eval() method


def test_package_source_runs_no_code_from_data():
    files = sorted((ROOT / "minibloom").rglob("*.py"))
    assert len(files) > 15
    findings = [f for p in files for f in _security_findings(p.read_text(encoding="utf-8"), p.name)]
    assert findings == []
    parity = (ROOT / "minibloom" / "parity.py").read_text(encoding="utf-8")
    assert "torch.load" not in parity and "weights_only=False" not in parity


# ------------------------------------------------------------------------------------------------
# numba bounds checking (.ci/run runs the kernel tests once more with NUMBA_BOUNDSCHECK=1)
# ------------------------------------------------------------------------------------------------

_OOB = """
import numba, numpy as np
@numba.njit(cache=False)
def read(a, i):
    return a[i]
try:
    read(np.zeros(3), 7)
    print("unchecked")
except IndexError:
    print("IndexError")
"""


def test_numba_boundscheck_env_flag_turns_oob_into_index_error(tmp_path):
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _OOB], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "IndexError", out.stderr[-2000:]


def test_boundscheck_is_active_in_the_ci_pass():
    """Runs only in .ci/run's NUMBA_BOUNDSCHECK=1 pass: proves the flag reached numba there."""
    if os.environ.get("NUMBA_BOUNDSCHECK") != "1":
        pytest.skip("runs in .ci/run's second pass (NUMBA_BOUNDSCHECK=1)")
    import numba

    assert numba.config.BOUNDSCHECK

    @numba.njit(cache=False)
    def read(a, i):
        return a[i]

    with pytest.raises(IndexError):
        read(np.zeros(3), 7)


# ------------------------------------------------------------------------------------------------
# the CLI: one line naming the file, non-zero exit
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["weights", "config", "tokenizer"])
def test_cli_prints_one_line_for_a_broken_model(tmp_path, capsys, broken):
    from minibloom.cli import main

    model = (
        tmp_path / "m"
    )  # a working model first: TINY with room for the golden tokenizer's 8000 ids
    save_params(model, {**_params(), "word_embeddings.weight": np.zeros((8000, 12), np.float32)})
    (model / "config.json").write_text(
        BloomConfig(vocab_size=8000, hidden_size=12, n_layer=2, n_head=3).to_json_string()
    )
    BloomTokenizer.from_file(golden_path("tokenizer.json")).save(model / "tokenizer.json")
    assert main(["generate", "hi", "--preset", str(model), "--max-length", "4"]) == 0
    capsys.readouterr()
    if broken == "weights":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 2])
        expect = "model.safetensors"
    elif broken == "config":
        (model / "config.json").write_text(
            '{"n_head": 5, "hidden_size": 12, "n_layer": 2, "vocab_size": 8000}'
        )
        expect = "config.json: hidden_size 12 is not divisible by n_head 5"
    else:
        (model / "tokenizer.json").write_text('{"model": {"type": "WordPiece"}}')
        expect = "tokenizer.json"
    assert main(["generate", "hi", "--preset", str(model), "--max-length", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minibloom: error: ") and err.count("\n") == 1 and expect in err, err
