"""Training: 10-step parity with torch (golden and live), fit/evaluate, checkpoints and resume.

The golden file (tools/golden_train.py) holds 10 torch.optim.AdamW steps on a tiny
BloomForCausalLM with weight decay (biases and LayerNorms excluded), clipping and a warmup+cosine
schedule; the same batches go through minibloom's Trainer here.
"""

import os
import signal
import sys

import numpy as np
import pytest
from conftest import GOLDEN, ROOT, TINY_TRAIN, assert_close, golden_path, requires_transformers

from minibloom.causal_lm import BloomCausalLM
from minibloom.errors import ArgumentError, TrainingError
from minibloom.model import BloomBackbone
from minibloom.optim import BIAS_AND_NORM, AdamW, WarmupCosineSchedule
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.training.train import ArrayDataset, Trainer, evaluate, latest_checkpoint

# float32 forward/backward vs torch over 10 steps. Measured (golden): losses 7.8e-7, grad norms
# 1.6e-6 relative, parameters 1.7e-6 (qkv bias); the tolerances leave ~5x headroom.
LOSS_ATOL = 5e-6
NORM_RTOL = 1e-5
PARAM_ATOL = 1e-5


def _golden_run(model_dir, batches):
    """minibloom's Trainer over the golden batches; returns (losses, grad norms, lrs, params)."""
    lm = BloomCausalLM.from_preset(str(model_dir), preprocessor=None)
    steps = len(batches["y"])
    flat = {
        k: np.asarray(batches[k]).reshape(-1, batches[k].shape[-1])
        for k in ("token_ids", "padding_mask", "y", "sample_weight")
    }
    data = ArrayDataset(
        {"token_ids": flat["token_ids"], "padding_mask": flat["padding_mask"]},
        flat["y"],
        flat["sample_weight"],
    )
    opt = AdamW(
        WarmupCosineSchedule(1e-2, 2, steps),
        weight_decay=0.1,
        exclude_from_weight_decay=BIAS_AND_NORM,
        global_clipnorm=1.0,
    )
    norms = []
    trainer = Trainer(lm, opt, data, batch_size=batches["y"].shape[1], shuffle=False)
    hist = trainer.run(max_steps=steps, on_step=lambda t, loss, norm, lr: norms.append(norm))
    return np.array(hist["step_loss"]), np.array(norms), np.array(hist["learning_rate"]), lm.params


def _check_against(ref_losses, ref_norms, ref_lrs, ref_params, got):
    losses, norms, lrs, params = got
    assert_close("losses", losses, ref_losses, atol=LOSS_ATOL)
    assert_close("grad norms", norms, ref_norms, atol=0, rtol=NORM_RTOL)
    assert_close("learning rates", lrs, ref_lrs, atol=1e-12)
    assert set(params) == set(ref_params)
    for k in params:
        assert_close(f"param {k}", params[k], ref_params[k], atol=PARAM_ATOL)


def test_ten_adamw_steps_match_torch_golden():
    ref = np.load(golden_path("train/reference.npz"))
    batches = {k: ref[k] for k in ("token_ids", "padding_mask", "y", "sample_weight")}
    got = _golden_run(GOLDEN / "train" / "model", batches)
    ref_params = {k[len("param:") :]: ref[k] for k in ref.files if k.startswith("param:")}
    _check_against(ref["losses"], ref["grad_norms"], ref["learning_rates"], ref_params, got)
    assert got[0][-1] < got[0][0]  # the loss went down over the 10 steps


@requires_transformers
def test_ten_adamw_steps_match_torch_live(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import golden_train
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(1)  # a different model and batches than the golden file
    config = BloomConfig(
        vocab_size=golden_train.VOCAB,
        hidden_size=48,
        n_layer=2,
        n_head=6,
        attn_implementation="eager",
    )
    BloomForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    batches = golden_train.make_batches(seed=1)
    ref = golden_train.run_torch(tmp_path, batches)
    _check_against(*ref, _golden_run(tmp_path, batches))


# ------------------------------------------------------------------------------------------------
# a tiny model trained on raw strings
# ------------------------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes + 4 (ids 0-3 are BLOOM's specials): a real tokenizer for 'Hello' level texts."""

    start_token_id, end_token_id, pad_token_id = 1, 2, 3
    vocabulary_size = 260

    def encode(self, text):
        return [b + 4 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 4 for i in ids if i >= 4).decode("utf-8", "replace")


TEXTS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "the mat and the log",
    "on the mat the cat sat",
    "the log the dog",
    "cat dog cat dog",
    "sat on a mat",
]


def _tiny_lm(seed=0, dropout=0.0):
    backbone = BloomBackbone(
        vocabulary_size=260, num_layers=2, num_heads=6, hidden_dim=48, dropout=dropout, seed=seed
    )
    return BloomCausalLM(backbone, BloomCausalLMPreprocessor(ByteTokenizer(), sequence_length=16))


def test_fit_on_raw_strings_lowers_the_loss():
    lm = _tiny_lm()
    lm.compile(optimizer=AdamW(3e-3))
    before = lm.evaluate(TEXTS)
    hist = lm.fit(TEXTS, batch_size=4, epochs=6, validation_data=TEXTS[:2], verbose=0)
    after = lm.evaluate(TEXTS)
    assert len(hist["loss"]) == 6 and len(hist["val_loss"]) == 6 and len(hist["step_loss"]) == 12
    assert hist["loss"][-1] < hist["loss"][0] - 0.5
    assert after["loss"] < before["loss"] - 0.5 and after["accuracy"] > before["accuracy"]
    assert after["perplexity"] == pytest.approx(np.exp(after["loss"]))


def test_evaluate_matches_loss_and_grads():
    lm = _tiny_lm()
    x, y, w = lm.preprocessor(TEXTS[:3])
    loss, _ = lm.loss_and_grads(x, y, w)
    metrics = evaluate(lm, ArrayDataset(x, y, w), batch_size=2)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["tokens"] == w.sum()


def test_evaluate_file_shows_progress_and_scores_alike(tmp_path, capsys):
    from minibloom.training.evaluation import evaluate_file

    lm = _tiny_lm()
    corpus = tmp_path / "held.txt"
    corpus.write_text("\n\n".join(TEXTS * 4), encoding="utf-8")
    quiet = evaluate_file(lm, corpus, sequence_length=8, batch_size=2)
    assert capsys.readouterr().err == ""
    shown = evaluate_file(lm, corpus, sequence_length=8, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet
    assert "evaluate" in err and "100%" in err and f"{quiet['tokens']}/{quiet['tokens']}" in err


def test_long_loads_show_a_progress_bar_on_a_terminal(monkeypatch, capsys):
    """A checkpoint of LOAD_BAR_BYTES or more shows a bar on a terminal; pipes and logs get none."""
    from minibloom.io import checkpoint

    model = golden_path("generate/model")
    plain = BloomCausalLM.from_preset(str(model)).backbone.params
    assert capsys.readouterr().err == ""  # small: no bar
    monkeypatch.setattr(checkpoint, "LOAD_BAR_BYTES", 0)
    BloomCausalLM.from_preset(str(model))
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    params = BloomCausalLM.from_preset(str(model)).backbone.params
    err = capsys.readouterr().err
    assert (
        f"\rloading {model.name}:" in err and "503k" in err
    )  # the bytes to read (bar cleared after)
    assert all(np.array_equal(params[k], plain[k]) for k in plain)


def test_compile_and_fit_arguments():
    lm = _tiny_lm()
    with pytest.raises(ArgumentError, match="loss"):
        lm.compile(loss="mse")
    with pytest.raises(ArgumentError, match="optimizer"):
        lm.compile(optimizer="sgd")
    x, y, w = lm.preprocessor(TEXTS[:2])
    with pytest.raises(ArgumentError, match="y"):
        lm.fit(x, verbose=0)
    with pytest.raises(ArgumentError, match="not a single batch"):
        Trainer(lm, AdamW(1e-3), _EmptyData(), batch_size=2)


class _EmptyData:
    def num_batches(self, batch_size):
        return 0


# ------------------------------------------------------------------------------------------------
# checkpoints: interrupt + resume is bit-identical; non-finite loss stops and keeps the checkpoint
# ------------------------------------------------------------------------------------------------


def _trainer(tmp_path, name, dropout=0.1, accumulate_steps=2):
    lm = _tiny_lm(seed=3, dropout=dropout)
    data = ArrayDataset(*lm.preprocessor(TEXTS))
    opt = AdamW(
        WarmupCosineSchedule(5e-3, 2, 12),
        weight_decay=0.1,
        exclude_from_weight_decay=BIAS_AND_NORM,
        global_clipnorm=1.0,
    )
    return Trainer(
        lm,
        opt,
        data,
        batch_size=2,
        seed=5,
        accumulate_steps=accumulate_steps,
        checkpoint_dir=tmp_path / name,
        save_every=2,
    )


def test_interrupt_and_resume_is_bit_identical(tmp_path):
    """Ctrl-C at step 5 of 12 (mid-epoch, dropout on, accumulation 2), then resume in a fresh
    process-like setup (new model, optimizer and trainer): same parameters, bit for bit."""
    full = _trainer(tmp_path, "full")
    full.run(max_steps=12)  # 2 steps per epoch (4 batches / 2 accumulated) -> 6 epochs

    first = _trainer(tmp_path, "resumed")

    def ctrl_c(trainer, loss, norm, lr):
        if trainer.step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: finish the step, save

    with pytest.raises(KeyboardInterrupt, match="step 5"):
        first.run(max_steps=12, on_step=ctrl_c)
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000005"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    second = _trainer(tmp_path, "resumed")
    assert not np.array_equal(second.lm.params["ln_f.weight"], first.lm.params["ln_f.weight"])
    second.load_checkpoint()
    assert (second.step, second.epoch, second.batch) == (5, 2, 2)
    second.run(max_steps=12)
    for k, p in full.lm.params.items():
        np.testing.assert_array_equal(second.lm.params[k], p, err_msg=k)
        np.testing.assert_array_equal(second.optimizer.m[k], full.optimizer.m[k], err_msg=k)
    assert second.history == full.history
    # only the newest checkpoints are kept; nothing half-written is left behind
    names = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert names == ["LATEST", "step-00000010", "step-00000012"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf inside the poisoned forward
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, "nan", dropout=0.0, accumulate_steps=1)

    def poison(t, loss, norm, lr):
        if t.step == 3:
            t.lm.params["h.0.mlp.dense_h_to_4h.bias"][0] = np.inf

    with pytest.raises(TrainingError, match=r"non-finite loss .* step 4 .*step-00000002"):
        trainer.run(max_steps=10, on_step=poison)
    assert latest_checkpoint(tmp_path / "nan").name == "step-00000002"
    fresh = _trainer(tmp_path, "nan", dropout=0.0, accumulate_steps=1)
    fresh.load_checkpoint()
    assert fresh.step == 2 and all(np.isfinite(p).all() for p in fresh.lm.params.values())


def test_resume_refuses_a_different_data_setup(tmp_path):
    t = _trainer(tmp_path, "ck", dropout=0.0)
    t.run(max_steps=2)
    lm = _tiny_lm(seed=3)
    other = Trainer(
        lm,
        AdamW(1e-3),
        ArrayDataset(*lm.preprocessor(TEXTS)),
        batch_size=4,
        seed=5,
        accumulate_steps=2,
        checkpoint_dir=tmp_path / "ck",
    )
    with pytest.raises(TrainingError, match="batch_size=2"):
        other.load_checkpoint()
    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(lm, AdamW(1e-3), other.data, checkpoint_dir=tmp_path / "none").load_checkpoint()


# ------------------------------------------------------------------------------------------------
# the `train` command
# ------------------------------------------------------------------------------------------------


def test_cli_train_writes_checkpoints_curve_and_model_then_resumes(tmp_path, monkeypatch, capsys):
    from minibloom.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the [plot] extra missing -> CSV only
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(60)),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    common = [
        "train",
        "--data",
        str(corpus),
        "--out",
        str(out),
        *TINY_TRAIN,
        "--lr",
        "1e-2",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--save-every",
        "2",
        "--no-progress",
    ]
    assert main(common + ["--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert "held-out loss" in text and "matplotlib is not installed" in text
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-00000004"
    rows = (out / "loss_curve.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,learning_rate,heldout_loss" and len(rows) == 5
    assert not (out / "loss_curve.png").exists()

    assert main(common + ["--steps", "6", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-00000006"
    assert len((out / "loss_curve.csv").read_text().splitlines()) == 7  # history carried over
    lm = BloomCausalLM.from_preset(str(out / "model"))
    assert lm.backbone.config.n_layer == 1 and lm.tokenizer is not None
    from minibloom.io.safetensors import read_safetensors

    saved = read_safetensors(out / "checkpoints" / "step-00000006" / "model.safetensors")
    for k, p in lm.params.items():
        np.testing.assert_array_equal(p, saved[k][1])


def test_cli_train_errors(tmp_path, capsys):
    from minibloom.cli import main

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("too short", encoding="utf-8")
    rc = main(
        [
            "train",
            "--data",
            str(corpus),
            "--out",
            str(tmp_path / "o"),
            "--tokenizer",
            str(golden_path("tokenizer.json")),
            "--seq-len",
            "64",
            "--steps",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "minibloom: error: " in capsys.readouterr().err
