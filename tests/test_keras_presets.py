"""keras-hub presets: reading and writing them (io/keras.py), keras' Adam, keras' packing, the
kagglehub cache, against the golden files of tools/golden_keras.py and, live, keras-hub itself.

Golden tests need only h5py (the `keras` extra); live tests need keras + keras-hub (CI installs
them, torch backend) and skip with a reason otherwise.
"""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from conftest import GOLDEN, assert_close, golden_path, tree_digest

from minibloom import BloomCausalLM, BloomTokenizer
from minibloom.config import BloomConfig
from minibloom.errors import ArgumentError, CheckpointError, ConfigError, PresetNotFoundError
from minibloom.io import keras, presets
from minibloom.model import BloomBackbone
from minibloom.optim import Adam, AdamW
from minibloom.preprocessor import BloomCausalLMPreprocessor

requires_h5py = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None,
    reason="h5py not installed (pip install -e '.[keras]')",
)
requires_keras_hub = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("h5py", "keras", "keras_hub", "torch")),
    reason="keras-hub not installed (pip install --no-deps keras keras-hub, see .ci/run)",
)
pytestmark = requires_h5py

KERAS = GOLDEN / "keras"


@pytest.fixture
def cases():
    return np.load(golden_path("keras/cases.npz"))


def _x(c):
    return {"token_ids": c["token_ids"], "padding_mask": c["padding_mask"]}


def _keras_hub():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras_hub

    return keras_hub


def keras_hub_numpy(x):
    """A keras tensor or variable (torch backend) as a numpy array."""
    from keras import ops

    return np.asarray(ops.convert_to_numpy(x))


def _keras_logits(model, x):
    return keras_hub_numpy(
        model({"token_ids": x["token_ids"], "padding_mask": np.asarray(x["padding_mask"])})
    )


# --- reading keras-hub's files -------------------------------------------------------------------


def test_golden_logits_of_a_keras_hub_preset(cases):
    lm = BloomCausalLM.from_preset(golden_path("keras/preset"))
    assert (
        lm.backbone.config.vocab_size
        == json.loads((KERAS / "meta.json").read_text())["vocabulary_size"]
    )
    assert (lm.backbone.config.hidden_size, lm.backbone.config.n_head) == (16, 4)
    got = lm.predict(_x(cases))
    assert_close(
        "keras-hub logits (real positions)",
        got,
        cases["logits"],
        1e-5,
        where=cases["padding_mask"][..., None],
    )
    assert_close("keras-hub logits (all positions)", got, cases["logits"], 1e-5)


def test_keras_preset_preprocessor_packs_like_keras_hub():
    lm = BloomCausalLM.from_preset(golden_path("keras/preset"))
    pre = lm.preprocessor
    spec = json.loads((KERAS / "preset" / "preprocessor.json").read_text())["config"]
    assert (pre.sequence_length, pre.add_start_token, pre.add_end_token) == (
        spec["sequence_length"],
        spec["add_start_token"],
        spec["add_end_token"],
    )
    assert pre.padding_side == "right" and pre.add_start_token
    # the special ids of the keras tokenizer become the config's (keras keeps them in the tokenizer)
    tok = pre.tokenizer
    cfg = lm.backbone.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.token_to_id("<s>"),
        tok.token_to_id("</s>"),
        tok.token_to_id("<pad>"),
    )
    assert (
        BloomCausalLM.from_preset(golden_path("keras/preset"), preprocessor=None).preprocessor
        is None
    )


def test_a_keras_config_is_never_read_as_an_hf_config():
    with pytest.raises(ConfigError, match="a keras config"):
        BloomConfig.from_json_file(golden_path("keras/preset/config.json"))
    assert keras.is_keras_preset(KERAS / "preset") and not keras.is_keras_preset(
        GOLDEN / "hf5_no_tokenizer"
    )


def test_backbone_only_preset_loads_without_a_preprocessor(cases):
    lm = BloomCausalLM.from_preset(golden_path("keras/after_step"))
    assert lm.preprocessor is None and lm.checkpoint_dtype == "float32"


def _convert_h5(src, dst, dtype):
    """Copy a keras preset, storing every variable in float16 or (keras' way) bfloat16 words."""
    import h5py

    from minibloom.io.safetensors import f32_to_bf16

    shutil.copytree(src, dst)
    with h5py.File(dst / "model.weights.h5", "a") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in names:
            a = f[n][()]
            del f[n]
            if dtype == "float16":
                f[n] = a.astype(np.float16)
            else:
                f.create_dataset(n, data=f32_to_bf16(a).view("V2")).attrs["dtype"] = "bfloat16"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_float16_and_bfloat16_variables(tmp_path, dtype):
    from minibloom.io.safetensors import bf16_to_f32, f32_to_bf16

    ref = BloomCausalLM.from_preset(golden_path("keras/preset")).params
    _convert_h5(KERAS / "preset", tmp_path / "p", dtype)
    lm = BloomCausalLM.from_preset(tmp_path / "p")
    assert lm.checkpoint_dtype == dtype
    for name, x in ref.items():
        rounded = (
            x.astype(np.float16).astype(np.float32)
            if dtype == "float16"
            else bf16_to_f32(f32_to_bf16(x))
        )
        np.testing.assert_array_equal(lm.params[name], rounded, err_msg=name)


def test_truncated_missing_and_misshaped_variables_are_one_line_errors(tmp_path):
    import h5py

    bad = tmp_path / "truncated"
    shutil.copytree(KERAS / "preset", bad)
    data = (bad / "model.weights.h5").read_bytes()
    (bad / "model.weights.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"truncated/model\.weights\.h5: not a readable keras weights file"
    ):
        BloomCausalLM.from_preset(bad)

    missing = tmp_path / "missing"
    shutil.copytree(KERAS / "preset", missing)
    with h5py.File(missing / "model.weights.h5", "a") as f:
        del f["layers/bloom_decoder_1/_self_attention_layer/_value_dense/vars/1"]
    with pytest.raises(CheckpointError) as e:
        BloomCausalLM.from_preset(missing)
    msg = str(e.value)
    assert (
        "missing/model.weights.h5" in msg
        and "_value_dense/vars/1" in msg
        and "h.1.self_attention" in msg
    )
    assert "\n" not in msg

    shaped = tmp_path / "shaped"
    shutil.copytree(KERAS / "preset", shaped)
    with h5py.File(shaped / "model.weights.h5", "a") as f:
        del f["layers/layer_normalization_1/vars/0"]
        f["layers/layer_normalization_1/vars/0"] = np.ones(15, np.float32)
    with pytest.raises(
        CheckpointError,
        match=r"'layers/layer_normalization_1/vars/0' \(ln_f.weight\) has shape \(15,\), expected \(16,\)",
    ):
        BloomCausalLM.from_preset(shaped)

    nan = tmp_path / "nan"
    shutil.copytree(KERAS / "preset", nan)
    with h5py.File(nan / "model.weights.h5", "a") as f:
        f["layers/reversible_embedding/vars/0"][2, 3] = np.nan
    with pytest.raises(CheckpointError, match="word_embeddings.weight' holds non-finite"):
        BloomCausalLM.from_preset(nan)


def test_without_h5py_one_line_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(
        CheckpointError, match=r"which need h5py: pip install 'minibloom\[keras\]'$"
    ):
        BloomCausalLM.from_preset(KERAS / "preset")


def test_bad_keras_configs(tmp_path):
    d = tmp_path / "p"
    shutil.copytree(KERAS / "preset", d)
    spec = json.loads((d / "config.json").read_text())
    del spec["config"]["num_heads"]
    (d / "config.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="BloomBackbone config is missing num_heads"):
        BloomCausalLM.from_preset(d)
    spec["class_name"] = spec["registered_name"] = "keras_hub>GPT2Backbone"
    (d / "config.json").write_text(json.dumps(spec))
    with pytest.raises(
        ConfigError, match="expected keras-hub's BloomBackbone config, found class 'GPT2Backbone'"
    ):
        BloomCausalLM.from_preset(d)


# --- keras' Adam and train step -------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["2e-05", "0.01"])
def test_adam_equals_keras_adam_step_for_step(lr):
    a = np.load(golden_path("keras/adam.npz"))
    p = {k: a[f"p0.{k}"].copy() for k in "ab"}
    torch_style = {k: a[f"p0.{k}"].copy() for k in "ab"}
    opt, other = Adam(float(lr)), AdamW(float(lr), epsilon=1e-7, weight_decay=0.0)
    for t in range(3):
        g = {k: a[f"g{t}.{k}"] for k in "ab"}
        opt.apply(p, g)
        other.apply(torch_style, {k: v.copy() for k, v in g.items()})
    for k in "ab":
        assert_close(f"keras Adam lr={lr} {k}", p[k], a[f"lr{lr}.{k}"], 1e-6)
    # the gradients span 1e-9..1: torch's placement of epsilon would be visibly different
    assert (
        max(np.abs(torch_style[k] - a[f"lr{lr}.{k}"]).max() for k in "ab") > 1e-6 * float(lr) / 2e-5
    )


def test_compile_auto_is_keras_hubs_default_and_one_train_on_batch_step(cases):
    lm = BloomCausalLM.from_preset(golden_path("keras/preset"))
    lm.compile(loss="sum_over_batch_size")  # keras-hub's default loss reduction
    assert isinstance(lm.optimizer, Adam)
    assert (lm.optimizer.learning_rate, lm.optimizer.epsilon) == (2e-5, 1e-7)
    before = {k: v.copy() for k, v in lm.params.items()}
    history = lm.fit(
        x=_x(cases),
        y=cases["y"],
        sample_weight=cases["sample_weight"],
        batch_size=3,
        shuffle=False,
        verbose=0,
    )
    assert history["step"] == [1]
    assert abs(history["step_loss"][0] - float(cases["train_loss"])) <= 1e-5
    after = BloomCausalLM.from_preset(golden_path("keras/after_step")).params
    worst = max(assert_close(f"after one step: {k}", lm.params[k], after[k], 1e-6) for k in after)
    moved = max(float(np.abs(after[k] - before[k]).max()) for k in after)
    assert moved > 10 * max(worst, 1e-7)  # the step itself is far larger than the difference
    lm.compile(optimizer="adamw")
    assert type(lm.optimizer) is AdamW and lm.optimizer.epsilon == 1e-8


# --- keras' preprocessing ---------------------------------------------------------------------------


def test_preprocessing_ids_equal_keras_hub():
    spec = json.loads(golden_path("keras/preprocess.json").read_text(encoding="utf-8"))
    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    assert [tok.encode(s) for s in spec["strings"]] == spec["tokenize"]
    pre = BloomCausalLMPreprocessor(
        tok, spec["sequence_length"], add_start_token=True, padding_side="right"
    )
    x, y, w = pre(spec["strings"])
    assert x["token_ids"].tolist() == spec["token_ids"]
    assert x["padding_mask"].astype(int).tolist() == spec["padding_mask"]
    assert y.tolist() == spec["y"] and w.tolist() == spec["sample_weight"]
    g = pre.generate_preprocess(spec["strings"][:3], sequence_length=spec["sequence_length"])
    assert g["token_ids"].tolist() == spec["generate_token_ids"]
    assert g["padding_mask"].astype(int).tolist() == spec["generate_padding_mask"]
    # the HF packing (our default) differs: no <s>, prompts on the left
    hf = BloomCausalLMPreprocessor(tok, spec["sequence_length"])
    assert hf(spec["strings"])[0]["token_ids"].tolist() != spec["token_ids"]


def test_tokenizer_constructor_as_keras_hub(tmp_path):
    vocab = json.loads((KERAS / "preset/assets/tokenizer/vocabulary.json").read_text())
    merges_path = KERAS / "preset/assets/tokenizer/merges.txt"
    merges = merges_path.read_text().splitlines()
    a = BloomTokenizer(vocabulary=vocab, merges=merges)
    b = BloomTokenizer(
        vocabulary=str(KERAS / "preset/assets/tokenizer/vocabulary.json"), merges=str(merges_path)
    )
    assert a.encode(" airplane at airport") == b.encode(" airplane at airport") == [6, 7, 8, 6, 9]
    for token in ("<s>", "</s>", "<pad>"):
        v = dict(vocab)
        del v[token]
        with pytest.raises(ValueError, match=token):
            BloomTokenizer(vocabulary=v, merges=merges)
    with pytest.raises(ValueError, match="two tokens separated by one space"):
        BloomTokenizer(vocabulary=vocab, merges=["Ġa  t"])


# --- writing keras-hub presets ------------------------------------------------------------------------


def _tiny_lm(seed=0):
    tok = BloomTokenizer.from_preset(KERAS / "preset")
    backbone = BloomBackbone(tok.vocabulary_size() + 3, 2, 2, 8, seed=seed)
    rng = np.random.default_rng(seed)
    for v in backbone.params.values():
        v += 0.1 * rng.standard_normal(v.shape).astype(np.float32)
    return BloomCausalLM(backbone, BloomCausalLMPreprocessor(tok, 12))


def test_keras_format_round_trip_keeps_other_files_and_replaces_the_other_format(tmp_path, cases):
    lm = _tiny_lm()
    d = tmp_path / "model"
    d.mkdir()
    (d / "README.md").write_text("mine")
    (d / "assets").mkdir()
    (d / "assets" / "notes.txt").write_text("mine too")
    lm.save_to_preset(d)  # HF first
    assert (d / "model.safetensors").is_file() and (d / "generation_config.json").is_file()
    lm.save_to_preset(d, format="keras")
    names = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
    assert names == {
        "README.md",
        "assets/notes.txt",
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "task.json",
        "tokenizer.json",
        "preprocessor.json",
        "assets/tokenizer/vocabulary.json",
        "assets/tokenizer/merges.txt",
    }
    back = BloomCausalLM.from_preset(d)
    for k, v in lm.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)
    assert back.preprocessor.sequence_length == 12 and not back.preprocessor.add_start_token
    mine = {k: v for k, v in tree_digest(d).items() if k in ("README.md", "assets/notes.txt")}
    lm.save_to_preset(d)  # and back to HF: the keras files go, the user's stay
    assert (
        not (d / "model.weights.h5").exists()
        and not (d / "assets/tokenizer/vocabulary.json").exists()
    )
    assert {k: v for k, v in tree_digest(d).items() if k in mine} == mine
    assert json.loads((d / "config.json").read_text())["model_type"] == "bloom"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_keras_format_dtypes(tmp_path, dtype):
    lm = _tiny_lm()
    lm.save_to_preset(tmp_path / "k", format="keras", dtype=dtype)
    lm.save_to_preset(tmp_path / "h", dtype=dtype)
    k, h = BloomCausalLM.from_preset(tmp_path / "k"), BloomCausalLM.from_preset(tmp_path / "h")
    assert k.checkpoint_dtype == h.checkpoint_dtype == dtype
    for name in lm.params:
        np.testing.assert_array_equal(k.params[name], h.params[name], err_msg=name)


def test_keras_format_refusals(tmp_path):
    lm = _tiny_lm()
    with pytest.raises(ArgumentError, match="format: expected 'hf' or 'keras'"):
        lm.save_to_preset(tmp_path / "x", format="onnx")
    with pytest.raises(ArgumentError, match="max_shard_bytes: only for format='hf'"):
        lm.save_to_preset(tmp_path / "x", format="keras", max_shard_bytes=1000)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"class_name": "GPT2Backbone", "config": {}}))
    before = tree_digest(other)
    with pytest.raises(ArgumentError, match="refusing to save"):
        lm.save_to_preset(other, format="keras")
    assert tree_digest(other) == before
    nopad = BloomTokenizer({"<s>": 0, "</s>": 1, "<pad>": 2, "a": 3}, [])
    nopad_lm = BloomCausalLM(lm.backbone, BloomCausalLMPreprocessor(nopad))
    nopad_lm.preprocessor.tokenizer._token_to_id.pop(
        "<pad>"
    )  # a tokenizer keras-hub could not load
    with pytest.raises(ArgumentError, match="has no <pad>"):
        nopad_lm.save_to_preset(tmp_path / "y", format="keras")
    assert not (tmp_path / "y").exists()


# --- the kagglehub cache ----------------------------------------------------------------------------


@pytest.fixture
def caches(tmp_path, monkeypatch):
    for var, name in (
        ("MINIBLOOM_HOME", "home"),
        ("HF_HUB_CACHE", "hub"),
        ("KAGGLEHUB_CACHE", "kaggle"),
    ):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(var, str(tmp_path / name))
    return tmp_path / "kaggle"


def test_kagglehub_cache_and_kaggle_handles(caches, capsys):
    with pytest.raises(PresetNotFoundError) as e:
        presets.resolve("bloom_560m_multi")
    msg = str(e.value)
    assert (
        "huggingface-cli download bigscience/bloom-560m" in msg
        and "keras_hub.models.BloomCausalLM.from_preset" in msg
    )
    assert "kaggle://keras/bloom/keras/bloom_560m_multi/4" in msg and str(caches) in msg
    base = caches / "models" / "keras" / "bloom" / "keras" / "bloom_560m_multi"
    shutil.copytree(KERAS / "preset", base / "3")
    shutil.copytree(KERAS / "preset", base / "4")
    assert presets.resolve("bloom_560m_multi") == base / "4"
    assert presets.resolve("bigscience/bloom-560m") == base / "4"
    assert presets.resolve("kaggle://keras/bloom/keras/bloom_560m_multi") == base / "4"
    assert presets.resolve("kaggle://keras/bloom/keras/bloom_560m_multi/3") == base / "3"
    with pytest.raises(
        PresetNotFoundError, match="not in the kagglehub cache.*kagglehub.model_download"
    ):
        presets.resolve("kaggle://keras/bloom/keras/bloom_560m_multi/5")
    for bad in (
        "kaggle://keras/bloom/keras",
        "kaggle://keras/bloom/keras/../x/1",
        "kaggle://a/b/c/d/v1",
    ):
        with pytest.raises(
            PresetNotFoundError, match="expected kaggle://owner/model/framework/variation"
        ):
            presets.resolve(bad)
    lm = BloomCausalLM.from_preset("kaggle://keras/bloom/keras/bloom_560m_multi/4")
    assert lm.backbone.config.hidden_size == 16
    from minibloom.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert (
        f"kaggle://keras/bloom/keras/bloom_560m_multi/4{' ' * 4}" in out and str(base / "4") in out
    )
    assert f"bloom_560m_multi     {base / '4'}" in out


# --- live: keras-hub itself ---------------------------------------------------------------------------


@requires_keras_hub
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_live_keras_hub_loads_what_we_write(tmp_path, cases, dtype):
    keras_hub = _keras_hub()
    lm = _tiny_lm(seed=3)
    lm.save_to_preset(tmp_path / "k", format="keras", dtype=dtype)
    x = _x(cases)
    x = {
        "token_ids": np.minimum(x["token_ids"], lm.tokenizer.vocabulary_size() - 1),
        "padding_mask": x["padding_mask"],
    }
    ours = BloomCausalLM.from_preset(tmp_path / "k").predict(x)
    task = keras_hub.models.BloomCausalLM.from_preset(str(tmp_path / "k"))
    assert task.preprocessor.sequence_length == 12 and task.preprocessor.add_start_token is False
    backbone = keras_hub.models.BloomBackbone.from_preset(str(tmp_path / "k"))
    assert_close("keras-hub task on our preset", _keras_logits(task, x), ours, 1e-5)
    hidden = backbone({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]})
    emb = keras_hub_numpy(backbone.token_embedding.embeddings)
    assert_close("keras-hub backbone on our preset", keras_hub_numpy(hidden) @ emb.T, ours, 1e-5)
    ids = [int(i) for i in np.asarray(task.preprocessor.tokenizer(" airplane at airport"))]
    assert ids == lm.tokenizer.encode(" airplane at airport")


@requires_keras_hub
def test_live_we_load_what_keras_hub_writes(tmp_path, cases):
    keras_hub = _keras_hub()
    vocab = json.loads((KERAS / "preset/assets/tokenizer/vocabulary.json").read_text())
    merges = (KERAS / "preset/assets/tokenizer/merges.txt").read_text().splitlines()
    tokenizer = keras_hub.models.BloomTokenizer(vocabulary=vocab, merges=merges)
    backbone = keras_hub.models.BloomBackbone(
        vocabulary_size=len(vocab), num_layers=3, num_heads=2, hidden_dim=12, intermediate_dim=48
    )
    rng = np.random.default_rng(5)
    for w in backbone.weights:
        w.assign(
            (0.3 * rng.standard_normal(tuple(w.shape)) + ("gamma" in w.path)).astype(np.float32)
        )
    task = keras_hub.models.BloomCausalLM(
        backbone=backbone,
        preprocessor=keras_hub.models.BloomCausalLMPreprocessor(tokenizer, sequence_length=9),
    )
    task.save_to_preset(str(tmp_path / "task"))
    backbone.save_to_preset(str(tmp_path / "backbone"))
    backbone.save_to_preset(str(tmp_path / "sharded"), max_shard_size=5e-6)  # GB: ~5 KB shards
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model_*.weights.h5"))
    assert len(shards) > 2 and not (tmp_path / "sharded" / "model.weights.h5").exists()
    for d in ("task", "backbone", "sharded"):
        lm = BloomCausalLM.from_preset(tmp_path / d)
        assert_close(
            f"our logits on keras-hub's {d} preset",
            lm.predict(_x(cases)),
            _keras_logits(task, _x(cases)),
            1e-5,
        )
    lm = BloomCausalLM.from_preset(tmp_path / "task")
    assert lm.preprocessor.sequence_length == 9 and lm.preprocessor.add_start_token
    x, y, w = lm.preprocessor(["airplane at airport", " air"])
    kx, ky, kw = task.preprocessor(["airplane at airport", " air"])
    assert x["token_ids"].tolist() == np.asarray(kx["token_ids"]).tolist()
    assert (
        y.tolist() == np.asarray(ky).tolist()
        and w.tolist() == np.asarray(kw).astype(float).tolist()
    )
