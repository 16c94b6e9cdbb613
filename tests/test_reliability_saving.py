"""Saving a model never loses a user's file (issue 10, finding 1), and keeps the model's dtype.

`save_to_preset` / `save_pretrained` write only the files a model consists of (config.json,
generation_config.json, tokenizer.json, model.safetensors or shards + index), replace them all at
once, remove only the stale weight files of an earlier save, and refuse a directory whose
config.json belongs to something else. Every case hashes the user's files before and after.
"""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import ROOT, requires_transformers, tree_digest

from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import ArgumentError, CheckpointError
from minibloom.io.checkpoint import INDEX_FILE, JOURNAL, read_checkpoint
from minibloom.model import BloomBackbone

SHIPPED = ROOT / "weights" / "tinybloom-5m"
TINY = BloomConfig(vocab_size=40, hidden_size=12, n_layer=2, n_head=3)


def _tiny(seed=0):
    return BloomCausalLM(BloomBackbone.from_config(TINY, seed=seed))


def _user_files(directory):
    """A model card, a picture, notes and a sub-directory: what a user keeps beside a model."""
    (directory / "NOTES.txt").write_text("my notes")
    (directory / "eval").mkdir()
    (directory / "eval" / "scores.csv").write_text("step,loss\n1,2.0\n")
    (directory / "my-weights.safetensors.bak").write_bytes(b"\0" * 64)
    return {
        k: v
        for k, v in tree_digest(directory).items()
        if k
        in (
            "NOTES.txt",
            "eval",
            "eval/scores.csv",
            "my-weights.safetensors.bak",
            "README.md",
            "loss_curve.png",
        )
    }


def _same_files(directory, before):
    after = tree_digest(directory)
    assert {k: after.get(k) for k in before} == before


def test_saving_back_into_the_shipped_model_keeps_every_other_file_and_f16(tmp_path):
    d = tmp_path / "tinybloom-5m"
    shutil.copytree(SHIPPED, d)
    before = _user_files(d)
    assert {"README.md", "loss_curve.png"} <= before.keys()
    size = (d / "model.safetensors").stat().st_size
    lm = BloomCausalLM.from_preset(d)
    lm.save_pretrained(d)
    _same_files(d, before)
    assert (d / "model.safetensors").stat().st_size == size  # still F16, not twice the size
    assert {dt for dt, _ in read_checkpoint(d).values()} == {"F16"}
    again = BloomCausalLM.from_preset(d)
    for k, a in lm.params.items():
        np.testing.assert_array_equal(again.params[k], a)
    assert sorted(p for p in os.listdir(d) if p.startswith(".")) == []


@pytest.mark.parametrize(
    "loaded_as, dtype, stored",
    [
        ("float32", None, "F16"),
        ("float16", None, "F16"),
        ("float32", "float32", "F32"),
        ("float32", "bfloat16", "BF16"),
    ],
)
def test_the_loaded_dtype_is_kept_unless_dtype_says_otherwise(tmp_path, loaded_as, dtype, stored):
    lm = BloomCausalLM.from_preset(SHIPPED, dtype=loaded_as)
    lm.save_to_preset(tmp_path / "m", dtype=dtype)
    assert {dt for dt, _ in read_checkpoint(tmp_path / "m").values()} == {stored}


def test_a_new_model_is_saved_in_its_in_memory_dtype(tmp_path):
    lm = _tiny()
    lm.save_to_preset(tmp_path / "a")
    assert {dt for dt, _ in read_checkpoint(tmp_path / "a").values()} == {"F32"}
    BloomCausalLM.from_preset(tmp_path / "a", dtype="float16").save_to_preset(
        tmp_path / "b", dtype="bfloat16"
    )
    b = BloomCausalLM.from_preset(tmp_path / "b")
    assert b.checkpoint_dtype == "bfloat16"
    b.save_to_preset(tmp_path / "c")
    assert {dt for dt, _ in read_checkpoint(tmp_path / "c").values()} == {"BF16"}


@pytest.mark.parametrize(
    "foreign",
    [
        '{"name": "my-project", "version": 3}',  # some other tool's config
        '{"module": "keras_hub.src.models.bloom.bloom_backbone", "class_name": "BloomBackbone", "config": {}}',
        '{"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8, "vocab_size": 10}',
        "not json at all",
    ],
)
def test_a_directory_with_a_foreign_config_json_is_refused_untouched(tmp_path, foreign):
    d = tmp_path / "project"
    d.mkdir()
    (d / "config.json").write_text(foreign)
    (d / "main.py").write_text("print('hello')\n")
    (d / "src").mkdir()
    (d / "src" / "lib.py").write_text("x = 1\n")
    before = tree_digest(d)
    with pytest.raises(
        ArgumentError,
        match=r"project: its config.json is not a BLOOM model config .*nothing was changed",
    ):
        _tiny().save_to_preset(d)
    assert tree_digest(d) == before


def test_saving_into_the_current_directory(tmp_path, monkeypatch):
    d = tmp_path / "here"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    monkeypatch.chdir(d)
    _tiny(1).save_to_preset(".")
    _tiny(2).save_to_preset(".")  # and again, over itself
    assert sorted(os.listdir(d)) == [
        "config.json",
        "generation_config.json",
        "keep.txt",
        "model.safetensors",
    ]
    assert sorted(os.listdir(tmp_path)) == ["here"]  # no stray ..*.old / ..*.tmp beside it
    back = BloomCausalLM.from_preset(d, preprocessor=None)
    np.testing.assert_array_equal(back.params["ln_f.weight"], _tiny(2).params["ln_f.weight"])


def test_only_the_stale_shards_the_old_index_names_are_removed(tmp_path):
    d = tmp_path / "m"
    _tiny().save_to_preset(d, max_shard_bytes=2000)
    shards = json.loads((d / INDEX_FILE).read_text())["weight_map"].values()
    assert len(set(shards)) > 2
    (d / "model-00009-of-00009.safetensors").write_bytes(b"a user's file the index does not name")
    before = _user_files(d) | {
        "model-00009-of-00009.safetensors": tree_digest(d)["model-00009-of-00009.safetensors"]
    }
    _tiny(1).save_to_preset(d)  # sharded -> single file
    _same_files(d, before)
    assert not (d / INDEX_FILE).exists() and not any((d / s).exists() for s in set(shards))
    _tiny(2).save_to_preset(
        d, max_shard_bytes=3000
    )  # single file -> sharded: model.safetensors goes
    _same_files(d, before)
    assert not (d / "model.safetensors").exists() and (d / INDEX_FILE).is_file()
    back = BloomCausalLM.from_preset(d, preprocessor=None)
    np.testing.assert_array_equal(
        back.params["h.1.mlp.dense_4h_to_h.weight"], _tiny(2).params["h.1.mlp.dense_4h_to_h.weight"]
    )


def test_a_file_where_the_directory_should_be_is_refused(tmp_path):
    (tmp_path / "model").write_text("a file")
    with pytest.raises(ArgumentError, match="model: exists and is not a directory"):
        _tiny().save_to_preset(tmp_path / "model")
    assert (tmp_path / "model").read_text() == "a file"


@pytest.mark.parametrize(
    "journal",
    [
        {
            "format": "minibloom-save",
            "rename": [[".config.json.abc.tmp", "../outside.json"]],
            "remove": [],
        },
        {"format": "minibloom-save", "rename": [], "remove": ["NOTES.txt"]},
        {"format": "minibloom-save", "rename": [["NOTES.txt", "config.json"]], "remove": []},
        {"rename": "nope"},
    ],
)
def test_a_journal_that_minibloom_did_not_write_is_never_followed(tmp_path, journal):
    d = tmp_path / "m"
    _tiny().save_to_preset(d)
    (d / "NOTES.txt").write_text("mine")
    (d / JOURNAL).write_text(json.dumps(journal))
    before = tree_digest(tmp_path)
    with pytest.raises(CheckpointError, match="not a save journal written by minibloom"):
        BloomCausalLM.from_preset(d, preprocessor=None)
    assert tree_digest(tmp_path) == before


@requires_transformers
def test_transformers_loads_a_save_into_a_directory_of_other_files(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BloomForCausalLM

    d = tmp_path / "m"
    d.mkdir()
    _user_files(d)
    lm = _tiny(3)
    lm.save_to_preset(d, max_shard_bytes=2500)
    ids = np.array([[1, 5, 7, 2, 9]])
    ours = lm.predict({"token_ids": ids})
    with torch.no_grad():
        theirs = BloomForCausalLM.from_pretrained(d).eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
