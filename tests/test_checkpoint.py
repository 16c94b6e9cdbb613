"""checkpoint.py: the safetensors container, bfloat16 by hand, sharding, HF key mapping, errors."""

import json
import mmap
import os

import numpy as np
import pytest
import safetensors.numpy
from conftest import assert_close, requires_transformers

from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import ArgumentError, CheckpointError
from minibloom.io.checkpoint import INDEX_FILE, load_params, read_checkpoint, save_params
from minibloom.io.safetensors import (
    bf16_to_f32,
    f32_to_bf16,
    read_header,
    read_safetensors,
    write_safetensors,
)
from minibloom.model import BloomBackbone, init_params

TINY = BloomConfig(vocab_size=40, hidden_size=12, n_layer=2, n_head=3)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(v.shape).astype(np.float32) for k, v in init_params(TINY).items()
    }


def _no_temp_files(directory):
    return not [p for p in os.listdir(directory) if p.startswith(".")]


# ------------------------------------------------------------------------------------------------
# bfloat16
# ------------------------------------------------------------------------------------------------


def test_bf16_known_values():
    x = np.array([1.0, -2.0, 0.0, np.inf, -np.inf, 3.140625], dtype=np.float32)
    words = f32_to_bf16(x)
    assert words.dtype == np.uint16
    assert words.tolist() == [0x3F80, 0xC000, 0x0000, 0x7F80, 0xFF80, 0x4049]
    np.testing.assert_array_equal(bf16_to_f32(words), x)


def test_bf16_rounds_to_nearest_even():
    bits = np.array(
        [
            0x3F808000,  # exactly half-way, kept bit even -> down to 0x3F80
            0x3F818000,  # half-way, kept bit odd -> up to 0x3F82
            0x3F808001,  # just above half-way -> up
            0x3F807FFF,  # just below half-way -> down
            0x7F7FFFFF,  # largest float32 -> rounds up into +inf
        ],
        dtype=np.uint32,
    )
    assert f32_to_bf16(bits.view(np.float32)).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80]


def test_bf16_keeps_nan():
    words = f32_to_bf16(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(bf16_to_f32(words)).all()


@requires_transformers
def test_bf16_matches_torch():
    import torch

    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 10.0 ** np.arange(
        -20, 20, 4
    ).repeat(1000)
    ours = f32_to_bf16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(
        bf16_to_f32(ours),
        torch.from_numpy(ours.view(np.int16)).view(torch.bfloat16).float().numpy(),
    )


# ------------------------------------------------------------------------------------------------
# one file
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_write_read_round_trip_and_agrees_with_safetensors_package(tmp_path, dtype):
    tensors = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "b.c": np.float32([1.5, -2.25]),
        "e": np.zeros((0, 3), np.float32),
    }
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, dtype)
    stored = read_safetensors(path)
    assert {k: v[0] for k, v in stored.items()} == {k: dtype for k in tensors}
    for k, x in tensors.items():
        words = stored[k][1]
        assert words.shape == x.shape
        got = bf16_to_f32(words) if dtype == "BF16" else words.astype(np.float32)
        tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2}[dtype]
        assert_close(k, got, x, atol=tol)
    if dtype != "BF16":  # the safetensors package reads what we write, and we read what it writes
        theirs = safetensors.numpy.load_file(path)
        for k in tensors:
            np.testing.assert_array_equal(theirs[k], stored[k][1])
        path2 = tmp_path / "theirs.safetensors"
        safetensors.numpy.save_file(
            {k: v.astype(stored[k][1].dtype) for k, v in tensors.items()}, path2
        )
        for k, (_, words) in read_safetensors(path2).items():
            np.testing.assert_array_equal(words, theirs[k])


def test_arrays_are_memory_mapped_views(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": np.ones((64, 64), np.float32)})
    (_, words) = read_safetensors(path)["w"]
    assert not words.flags.owndata  # a view into the mapping, not a copy
    base = words
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    words[0, 0] = 5.0  # copy-on-write: writable, and the file is untouched
    assert read_safetensors(path)["w"][1][0, 0] == 1.0


def _write_raw(path, header: dict, data: bytes, length=None):
    raw = json.dumps(header).encode()
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        (
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 4,
            None,
            "needs 8 bytes",
        ),
        (
            {"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "dtype 'I64'",
        ),
        (
            {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            None,
            "invalid shape",
        ),
        ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, None, "data_offsets"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"", 10**6, "does not fit"),
        (["not", "a", "dict"], b"", None, "JSON object"),
    ],
)
def test_bad_headers_are_named(tmp_path, header, data, length, message):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data, length)
    with pytest.raises(CheckpointError, match=message) as e:
        read_header(path)
    assert "bad.safetensors" in str(e.value)


def test_not_json_and_too_short(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((5).to_bytes(8, "little") + b"{nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(path)
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_header(tmp_path / "missing.safetensors")


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.ones(3, np.float32)})
    with pytest.raises(CheckpointError, match="'bad'"):
        write_safetensors(path, {"w": np.zeros(3, np.float32), "bad": np.arange(3)})
    np.testing.assert_array_equal(read_safetensors(path)["w"][1], np.ones(3))
    assert _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------------------------
# checkpoint directories and HF key mapping
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_save_load_round_trip(tmp_path, dtype, prefix):
    params = _params()
    save_params(tmp_path, params, dtype=dtype, prefix=prefix)
    assert all(k.startswith(prefix) for k in read_checkpoint(tmp_path))
    loaded = load_params(tmp_path, TINY)
    assert list(loaded) == list(params)
    for k, x in params.items():
        assert loaded[k].dtype == np.float32 and loaded[k].flags.c_contiguous
        assert_close(
            k, loaded[k], x, atol=0, rtol={"float32": 0, "float16": 1e-3, "bfloat16": 4e-3}[dtype]
        )


def test_sharded_round_trip(tmp_path):
    params = _params()
    files = save_params(tmp_path, params, max_shard_bytes=2000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and files[0].name == INDEX_FILE
    assert index["metadata"]["total_size"] == sum(x.nbytes for x in params.values())
    loaded = load_params(tmp_path, TINY)
    for k, x in params.items():
        np.testing.assert_array_equal(loaded[k], x)


def test_sharded_index_errors(tmp_path):
    save_params(tmp_path, _params(), max_shard_bytes=2000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a plain"):
        load_params(tmp_path, TINY)
    index["weight_map"][first] = "model-00099-of-00099.safetensors"
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match="lists shard 'model-00099-of-00099.safetensors', which is missing"
    ):
        load_params(tmp_path, TINY)


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    params = _params()
    del params["h.1.mlp.dense_4h_to_h.bias"]
    params["h.2.extra"] = np.zeros(3, np.float32)
    save_params(tmp_path / "a", params)
    with pytest.raises(CheckpointError) as e:
        load_params(tmp_path / "a", TINY)
    assert "missing 1 tensor(s): h.1.mlp.dense_4h_to_h.bias" in str(e.value)
    assert "unexpected 1 tensor(s): h.2.extra" in str(e.value)

    params = _params()
    params["h.0.self_attention.dense.weight"] = np.zeros((12, 13), np.float32)
    save_params(tmp_path / "b", params)
    with pytest.raises(
        CheckpointError,
        match=r"'h.0.self_attention.dense.weight' has shape \(12, 13\), expected \(12, 12\)",
    ):
        load_params(tmp_path / "b", TINY)


def test_prefix_duplicates_rejected(tmp_path):
    params = _params()
    tensors = {"transformer." + k: v for k, v in params.items()}
    tensors["ln_f.bias"] = params["ln_f.bias"]
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="both with and without"):
        load_params(tmp_path, TINY)


def test_lm_head_tied_accepted_untied_rejected(tmp_path):
    params = _params()
    tensors = {"transformer." + k: v for k, v in params.items()}
    tensors["lm_head.weight"] = params["word_embeddings.weight"]
    write_safetensors(tmp_path / "model.safetensors", tensors)
    assert set(load_params(tmp_path, TINY)) == set(params)  # equal head: accepted and dropped
    tensors["lm_head.weight"] = params["word_embeddings.weight"] + 1
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from word_embeddings.weight"):
        load_params(tmp_path, TINY)


def test_pytorch_bin_only_explains_how_to_convert(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError) as e:
        load_params(tmp_path, TINY)
    msg = str(e.value)
    assert (
        "never unpickles" in msg and "save_pretrained" in msg and "safe_serialization=True" in msg
    )


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
def test_float64_in_memory_widens_every_stored_dtype_exactly(tmp_path, stored):
    params = _params()
    save_params(tmp_path, params, dtype=stored)
    as32 = load_params(tmp_path, TINY)  # the stored values, widened to float32
    loaded = load_params(tmp_path, TINY, dtype="float64")
    for name, v in loaded.items():
        assert v.dtype == np.float64 and v.flags.c_contiguous
        np.testing.assert_array_equal(v, as32[name].astype(np.float64))


def test_empty_directory_and_ambiguous_files(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_params(tmp_path, TINY)
    write_safetensors(tmp_path / "a.safetensors", {"x": np.zeros(1, np.float32)})
    write_safetensors(tmp_path / "b.safetensors", {"y": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        load_params(tmp_path, TINY)


def test_float16_in_memory_is_zero_copy_for_f16_files(tmp_path):
    params = _params()
    save_params(tmp_path, params, dtype="float16")
    loaded = load_params(tmp_path, TINY, dtype="float16")
    assert all(v.dtype == np.float16 and not v.flags.owndata for v in loaded.values())
    save_params(tmp_path / "bf", params, dtype="bfloat16")
    loaded = load_params(tmp_path / "bf", TINY, dtype="float16")
    assert all(v.dtype == np.float16 for v in loaded.values())
    with pytest.raises(ArgumentError, match="dtype"):
        load_params(tmp_path, TINY, dtype="int8")
    with pytest.raises(ArgumentError, match="dtype"):
        save_params(tmp_path, params, dtype="int8")


# ------------------------------------------------------------------------------------------------
# BloomCausalLM.save_to_preset / from_preset
# ------------------------------------------------------------------------------------------------


def test_save_to_preset_round_trip_and_atomic_replace(tmp_path):
    lm = BloomCausalLM(BloomBackbone.from_config(TINY, _params(1)))
    out = lm.save_to_preset(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    back = BloomCausalLM.from_preset(out, preprocessor=None)
    assert back.backbone.config.to_dict() == TINY.to_dict()
    for k, x in lm.params.items():
        np.testing.assert_array_equal(back.params[k], x)

    # replacing an existing model: a failure half way leaves the old one intact
    other = BloomCausalLM(BloomBackbone.from_config(TINY, _params(2)))
    with pytest.raises(ArgumentError):
        other.save_pretrained(tmp_path / "m", dtype="float8")
    again = BloomCausalLM.from_preset(tmp_path / "m", preprocessor=None)
    np.testing.assert_array_equal(again.params["ln_f.bias"], lm.params["ln_f.bias"])
    assert _no_temp_files(tmp_path)
    other.save_pretrained(tmp_path / "m", dtype="bfloat16")
    assert read_checkpoint(tmp_path / "m")["ln_f.bias"][0] == "BF16"
    assert _no_temp_files(tmp_path)


def test_from_preset_without_weights_uses_config(tmp_path):
    lm = BloomCausalLM(BloomBackbone.from_config(TINY, _params(1)))
    lm.save_to_preset(tmp_path / "m")
    bare = BloomCausalLM.from_preset(tmp_path / "m", load_weights=False, preprocessor=None)
    assert bare.backbone.config.n_head == 3
    assert not np.array_equal(bare.params["ln_f.bias"], lm.params["ln_f.bias"])
    with pytest.raises(ArgumentError, match="preprocessor"):
        BloomCausalLM.from_preset(tmp_path / "m", preprocessor="yes")


def test_preprocessor_auto_and_tokenizer_saved(tmp_path):
    import shutil

    from conftest import GOLDEN

    from minibloom.training.bpe_train import train_tokenizer

    shutil.copytree(GOLDEN / "model" / "h6_prefix", tmp_path / "m")
    # the tokenizer's ids must fit in the model's 300 embedding rows (from_preset checks it)
    train_tokenizer(["Hello world, ¿qué tal? 你好"] * 4, vocab_size=290).save(
        tmp_path / "m" / "tokenizer.json"
    )
    lm = BloomCausalLM.from_preset(tmp_path / "m")  # preprocessor="auto" finds tokenizer.json
    assert lm.preprocessor is not None
    saved = lm.save_to_preset(tmp_path / "copy")
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    again = BloomCausalLM.from_preset(saved)
    text = "Hello world, ¿qué tal? 你好"
    assert again.tokenizer.encode(text) == lm.tokenizer.encode(text)
    assert BloomCausalLM.from_preset(saved, preprocessor=None).preprocessor is None


def test_save_to_preset_refuses_a_file_and_keeps_other_files(tmp_path):
    lm = BloomCausalLM(BloomBackbone.from_config(TINY, _params(1)))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("precious")
    lm.save_to_preset(
        tmp_path / "docs"
    )  # a directory of other files: the model goes in beside them
    assert (tmp_path / "docs" / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArgumentError, match="is not a directory"):
        lm.save_to_preset(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()
    lm.save_to_preset(tmp_path / "empty")  # an empty directory is fine
    assert (tmp_path / "empty" / "config.json").is_file()


def test_save_over_the_directory_a_model_was_loaded_from(tmp_path):
    # float32 params are copy-on-write views of the old files; replacing them must not break them
    BloomCausalLM(BloomBackbone.from_config(TINY, _params(1))).save_to_preset(tmp_path / "m")
    lm = BloomCausalLM.from_preset(tmp_path / "m", preprocessor=None)
    assert not lm.params["word_embeddings.weight"].flags.owndata
    before = {k: v.copy() for k, v in lm.params.items()}
    lm.params["ln_f.bias"][:] += 1.0  # edit in memory (copy-on-write), then save in place
    lm.save_to_preset(tmp_path / "m")
    after = BloomCausalLM.from_preset(tmp_path / "m", preprocessor=None)
    np.testing.assert_array_equal(after.params["ln_f.bias"], before["ln_f.bias"] + 1.0)
    np.testing.assert_array_equal(
        after.params["word_embeddings.weight"], before["word_embeddings.weight"]
    )
    np.testing.assert_array_equal(
        lm.params["h.0.mlp.dense_h_to_4h.weight"], before["h.0.mlp.dense_h_to_4h.weight"]
    )


def test_released_pages_read_back_unchanged(tmp_path):
    from minibloom.io.checkpoint import _release_pages

    x = np.random.default_rng(0).standard_normal((3, 5000)).astype(np.float32)
    write_safetensors(tmp_path / "x.safetensors", {"a": x[0], "b": x[1:]})
    stored = read_safetensors(tmp_path / "x.safetensors")
    _release_pages(stored["a"][1])  # shares a page with "b": dropping clean pages loses nothing
    np.testing.assert_array_equal(stored["a"][1], x[0])
    np.testing.assert_array_equal(stored["b"][1], x[1:])


def test_saved_files_follow_the_umask_not_the_temporary_files_owner_only_mode(tmp_path):
    import os
    import stat

    from minibloom.causal_lm import BloomCausalLM
    from minibloom.model import BloomBackbone

    old = os.umask(0o022)
    try:
        BloomCausalLM(
            BloomBackbone(vocabulary_size=16, num_layers=1, num_heads=2, hidden_dim=8)
        ).save_to_preset(tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    for f in (tmp_path / "m").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
