"""from_preset(..., dtype="auto"): each tensor kept as the checkpoint stores it (F16 -> float16,
BF16 -> uint16 bfloat16 words, F32 -> float32), like transformers' torch_dtype="auto".

For HF directories (one file and sharded, written by our writer and by transformers) and keras
presets: the kept words are the stored ones; logits equal the float32-loaded model exactly in the
reference tier and to float32 rounding in the fast tier (its matvec kernels sum in tiles); greedy
generation gives the same ids; save_to_preset keeps the stored dtype; fit refuses 16-bit
parameters in one line (the optimizer's float32 check, as for dtype="float16"); NaN in BF16 words
is found; the CLI takes `--dtype auto`.
"""

import importlib.util

import numpy as np
import pytest
from conftest import assert_close, requires_transformers

from minibloom import ops
from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import ArgumentError, CheckpointError
from minibloom.io.checkpoint import load_params, read_checkpoint, save_params
from minibloom.io.safetensors import f32_to_bf16
from minibloom.model import BloomBackbone, init_params

# big enough that a decode step takes the threaded matvec kernels (more than SERIAL_WORK)
SMALL = BloomConfig(vocab_size=512, hidden_size=64, n_layer=2, n_head=4)
KEPT = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
FAST_ATOL = 2e-5  # tiled float32 sums vs BLAS on the same widened weights (logits ~1)

requires_h5py = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None, reason="h5py not installed (the keras extra)"
)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in init_params(SMALL).items()
    }


def _save(directory, stored, shard=False):
    lm = BloomCausalLM(BloomBackbone.from_config(SMALL, _params()))
    lm.save_to_preset(directory, dtype=stored, max_shard_bytes=20000 if shard else None)
    return directory


def _logits(lm, ids):
    return lm.predict({"token_ids": ids, "padding_mask": np.ones(ids.shape, bool)})


def _ids():
    return np.random.default_rng(1).integers(0, SMALL.vocab_size, size=(2, 5))


@pytest.mark.parametrize("shard", [False, True])
@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
def test_auto_keeps_the_stored_words(tmp_path, stored, shard):
    _save(tmp_path, stored, shard)
    params = load_params(tmp_path, SMALL, dtype="auto")
    words = read_checkpoint(tmp_path)
    for name, p in params.items():
        assert p.dtype == KEPT[stored], name
        np.testing.assert_array_equal(p.view(np.uint8), words[name][1].view(np.uint8))


@pytest.mark.parametrize("numba", ["0", "1"])
@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
def test_auto_logits_and_generation_equal_the_float32_model(tmp_path, monkeypatch, stored, numba):
    monkeypatch.setenv("MINIBLOOM_NUMBA", numba)
    _save(tmp_path, stored)
    auto = BloomCausalLM.from_preset(tmp_path, dtype="auto")
    as32 = BloomCausalLM.from_preset(tmp_path)  # the same stored values, widened up front
    assert auto.backbone.params["h.0.mlp.dense_4h_to_h.weight"].dtype == KEPT[stored]
    for ids in (_ids(), _ids()[:, :1]):  # a prompt, and one-row-per-sequence (the decode path)
        got, ref = _logits(auto, ids), _logits(as32, ids)
        if numba == "0" or stored == "float32":
            np.testing.assert_array_equal(got, ref)  # the same code on the same values
        else:
            assert_close(f"{stored} auto vs float32 logits", got, ref, FAST_ATOL, 1e-5)
    prompt = {"token_ids": _ids(), "padding_mask": np.ones((2, 5), bool)}
    a = auto.generate(prompt, max_new_tokens=7, stop_token_ids=None)
    b = as32.generate(prompt, max_new_tokens=7, stop_token_ids=None)
    np.testing.assert_array_equal(np.asarray(a["token_ids"]), np.asarray(b["token_ids"]))


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_save_of_an_auto_model_keeps_the_stored_dtype(tmp_path, stored):
    _save(tmp_path / "a", stored)
    lm = BloomCausalLM.from_preset(tmp_path / "a", dtype="auto")
    lm.checkpoint_dtype = None  # the in-memory dtype alone decides
    lm.save_to_preset(tmp_path / "b")
    before, after = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    for name, (kind, words) in before.items():
        assert after[name][0] == kind
        np.testing.assert_array_equal(after[name][1], words)
    lm.save_to_preset(tmp_path / "c", dtype="float32")  # widened exactly
    np.testing.assert_array_equal(
        load_params(tmp_path / "c", SMALL)["h.1.mlp.dense_h_to_4h.weight"],
        load_params(tmp_path / "a", SMALL)["h.1.mlp.dense_h_to_4h.weight"],
    )


@pytest.mark.parametrize(
    ("stored", "dtype", "found"),
    [
        ("bfloat16", "auto", "bfloat16 words"),
        ("float16", "auto", "float16"),
        ("float32", "float16", "float16"),
    ],
)
def test_fit_refuses_16_bit_parameters_in_one_line(tmp_path, stored, dtype, found):
    _save(tmp_path, stored)
    lm = BloomCausalLM.from_preset(tmp_path, dtype=dtype, preprocessor=None)
    before = {k: v.copy() for k, v in lm.backbone.params.items()}
    x = {"token_ids": _ids(), "padding_mask": np.ones((2, 5), bool)}
    with pytest.raises(
        ArgumentError, match=f"fit: training needs float32 parameters, found {found}"
    ) as e:
        lm.fit(x, _ids(), batch_size=2, verbose=0)
    assert "\n" not in str(e.value) and "dtype='float32'" in str(e.value)
    for k, v in before.items():  # nothing was changed
        np.testing.assert_array_equal(lm.backbone.params[k], v)


def test_nan_in_bf16_words_is_found(tmp_path):
    params = _params()
    params["h.1.self_attention.dense.weight"][3, 5] = np.nan
    save_params(tmp_path, params, dtype="bfloat16")
    with pytest.raises(CheckpointError, match=r"h\.1\.self_attention\.dense\.weight.*\(3, 5\)"):
        load_params(tmp_path, SMALL, dtype="auto")
    assert load_params(tmp_path, SMALL, dtype="auto", nonfinite="ignore")


def test_widen_reads_uint16_as_bfloat16_words():
    x = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    like = np.zeros(1, np.float32)
    np.testing.assert_array_equal(ops.widen(f32_to_bf16(x), like), x)
    assert ops.widen(f32_to_bf16(x), np.zeros(1, np.float64)).dtype == np.float64


@requires_transformers
@pytest.mark.parametrize("torch_dtype", ["float16", "bfloat16"])
def test_auto_loads_what_transformers_saves(tmp_path, torch_dtype):
    import torch
    import transformers

    cfg = transformers.BloomConfig(vocab_size=512, hidden_size=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(cfg).to(getattr(torch, torch_dtype))
    model.save_pretrained(tmp_path, safe_serialization=True)
    lm = BloomCausalLM.from_preset(tmp_path, dtype="auto", preprocessor=None)
    w = lm.backbone.params["h.0.self_attention.query_key_value.weight"]
    assert w.dtype == KEPT[torch_dtype]
    theirs = model.transformer.h[0].self_attention.query_key_value.weight.detach()
    np.testing.assert_array_equal(w.view(np.int16), theirs.view(torch.int16).numpy())
    ids = _ids()
    assert_close(
        "transformers-saved auto vs float32",
        _logits(lm, ids),
        _logits(BloomCausalLM.from_preset(tmp_path, preprocessor=None), ids),
        FAST_ATOL,
        1e-5,
    )


@requires_h5py
@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_auto_keras_preset(tmp_path, stored):
    lm = BloomCausalLM(BloomBackbone.from_config(SMALL, _params()))
    lm.save_to_preset(tmp_path, dtype=stored, format="keras")
    auto = BloomCausalLM.from_preset(tmp_path, dtype="auto", preprocessor=None)
    as32 = BloomCausalLM.from_preset(tmp_path, preprocessor=None)
    assert auto.backbone.params["h.1.mlp.dense_h_to_4h.weight"].dtype == KEPT[stored]
    assert_close("keras auto vs float32", _logits(auto, _ids()), _logits(as32, _ids()), FAST_ATOL)


def test_cli_generate_takes_dtype_auto(tmp_path, capsys):
    from minibloom.cli import build_parser

    args = build_parser().parse_args(["generate", "x", "--dtype", "auto"])
    assert args.dtype == "auto"
