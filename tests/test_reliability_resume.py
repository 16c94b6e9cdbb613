"""Resume and re-run: a resumed run is the same run; a checkpoint is a model; an earlier run is never overwritten.

Finding 2 of issue 10: `train --preset DIR --resume` silently continued with the shipped
tokenizer. Now every checkpoint stores config.json and tokenizer.json, `--resume` builds the
model from them whatever --preset / --config / size flags say, and a flag or --tokenizer that
conflicts with them is refused with one line. A checkpoint directory (model.safetensors +
config.json + tokenizer.json, optimizer.safetensors beside) loads as a model, as HF Trainer's
checkpoint-N does. `train` into an --out holding a previous run refuses without --resume.
"""

import json
import shutil

import numpy as np
import pytest
from conftest import golden_path
from test_reliability_arguments import CORPUS, assert_one_error_line, cli, tiny_model_dir, tree_hash

from minibloom.causal_lm import BloomCausalLM
from minibloom.errors import TrainingError
from minibloom.io.safetensors import read_safetensors
from minibloom.tokenizer import BloomTokenizer, default_tokenizer_path
from minibloom.training.train import latest_checkpoint

RUN = [
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--lr",
    "1e-2",
    "--eval-every",
    "0",
    "--eval-batches",
    "1",
    "--save-every",
    "1",
    "--no-progress",
]


@pytest.fixture
def work(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return tmp_path


def _vocab(path):
    return json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]


def test_resume_with_preset_keeps_the_runs_tokenizer(work, capsys):
    """The regression of finding 2: the preset's tokenizer (8000 tokens, not the shipped 8192) stays."""
    preset = tiny_model_dir(work / "preset")
    assert _vocab(preset / "tokenizer.json") != _vocab(default_tokenizer_path())
    out = work / "run"
    rc, _, err = cli(
        capsys,
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        out,
        "--preset",
        preset,
        "--steps",
        "2",
        *RUN,
    )
    assert rc == 0, err
    ckpt = latest_checkpoint(out / "checkpoints")
    assert _vocab(ckpt / "tokenizer.json") == _vocab(preset / "tokenizer.json")
    rc, printed, err = cli(
        capsys,
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        out,
        "--preset",
        preset,
        "--steps",
        "3",
        "--resume",
        *RUN,
    )
    assert rc == 0, err
    assert "resumed from" in printed
    assert _vocab(out / "model" / "tokenizer.json") == _vocab(preset / "tokenizer.json")
    assert json.loads((out / "model" / "config.json").read_text()) == json.loads(
        (preset / "config.json").read_text()
    )


def _first_run(work, capsys, *extra):
    out = work / "run"
    rc, _, err = cli(
        capsys,
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        out,
        "--tokenizer",
        golden_path("tokenizer.json"),
        "--layers",
        "1",
        "--hidden",
        "24",
        "--heads",
        "3",
        "--steps",
        "2",
        *RUN,
        *extra,
    )
    assert rc == 0, err
    return out


def test_resume_refuses_conflicting_tokenizer_preset_config_and_sizes(work, capsys):
    out = _first_run(work, capsys)
    other_preset = tiny_model_dir(work / "other", layers=2)
    other_config = work / "other.json"
    other_config.write_text((other_preset / "config.json").read_text())
    shipped = default_tokenizer_path()
    before = tree_hash(work)
    common = [
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        out,
        "--steps",
        "4",
        "--resume",
        *RUN,
    ]
    cases = [
        (
            ["--tokenizer", shipped],
            [f"--tokenizer {shipped}", "checkpoints/step-00000002/tokenizer.json", "8192 vs 8000"],
        ),
        (["--preset", other_preset], ["--preset", "n_layer 2 vs 1", "config.json"]),
        (["--config", other_config], ["--config", "n_layer 2 vs 1"]),
        (["--layers", "2"], ["--layers 2", "n_layer 1"]),
        (["--hidden", "48"], ["--hidden 48", "hidden_size 24"]),
    ]
    for extra, needles in cases:
        rc, _, err = cli(capsys, *common, *extra)
        assert_one_error_line(rc, err, *needles)
        assert tree_hash(work) == before, extra
    # the same flags as the first run are no conflict: the run continues
    rc, _, err = cli(
        capsys,
        *common,
        "--tokenizer",
        golden_path("tokenizer.json"),
        "--layers",
        "1",
        "--heads",
        "3",
    )
    assert rc == 0, err
    assert latest_checkpoint(out / "checkpoints").name == "step-00000004"


def test_old_checkpoints_without_tokenizer_json_need_tokenizer_and_still_load(work, capsys):
    """Checkpoints written before this change: params.safetensors, no tokenizer.json."""
    out = _first_run(work, capsys)
    ckpt = latest_checkpoint(out / "checkpoints")
    for step in (out / "checkpoints").glob("step-*"):
        (step / "model.safetensors").rename(step / "params.safetensors")
        (step / "tokenizer.json").unlink()
    shutil.rmtree(out / "model")
    before = tree_hash(work)
    common = [
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        out,
        "--steps",
        "3",
        "--resume",
        *RUN,
    ]
    rc, _, err = cli(capsys, *common)
    assert_one_error_line(rc, err, "step-00000002 has no tokenizer.json", "pass --tokenizer")
    assert tree_hash(work) == before
    saved = read_safetensors(ckpt / "params.safetensors")
    rc, _, err = cli(capsys, *common, "--tokenizer", golden_path("tokenizer.json"))
    assert rc == 0, err
    assert latest_checkpoint(out / "checkpoints").name == "step-00000003"
    assert not np.array_equal(
        read_safetensors(out / "model" / "model.safetensors")["ln_f.weight"][1],
        saved["ln_f.weight"][1],
    )  # it trained on from the old weights


def test_a_checkpoint_directory_loads_as_a_model(work, capsys):
    out = _first_run(work, capsys)
    ckpt = latest_checkpoint(out / "checkpoints")
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "model.safetensors",
        "optimizer.safetensors",
        "config.json",
        "tokenizer.json",
        "state.json",
    } <= names
    assert "params.safetensors" not in names
    header = read_safetensors(ckpt / "model.safetensors")
    assert {dtype for dtype, _ in header.values()} == {"F32"} and "word_embeddings.weight" in header
    lm = BloomCausalLM.from_preset(str(ckpt))
    final = BloomCausalLM.from_preset(str(out / "model"))
    for k, a in final.params.items():  # the last checkpoint is the final model
        np.testing.assert_array_equal(lm.params[k], a, err_msg=k)
    assert lm.tokenizer is not None and lm.tokenizer.vocabulary_size() == 8000
    rc, printed, err = cli(capsys, "generate", "Line 3:", "--preset", ckpt, "--max-length", "10")
    assert rc == 0, err
    assert printed.startswith("Line 3:")


@pytest.mark.parametrize("earlier", ["run", "model only", "loss curve only"])
def test_rerunning_into_a_previous_run_without_resume_refuses(work, capsys, earlier):
    out = _first_run(work, capsys)
    if earlier == "model only":
        shutil.rmtree(out / "checkpoints")
        (out / "loss_curve.csv").unlink()
    elif earlier == "loss curve only":
        shutil.rmtree(out / "checkpoints")
        shutil.rmtree(out / "model")
    before = tree_hash(work)
    args = [
        "train",
        "--data",
        work / "corpus.txt",
        "--out",
        out,
        "--tokenizer",
        golden_path("tokenizer.json"),
        "--layers",
        "1",
        "--hidden",
        "24",
        "--heads",
        "3",
        "--steps",
        "2",
        *RUN,
    ]
    rc, _, err = cli(capsys, *args)
    assert_one_error_line(rc, err, f"--out {out}: holds a previous run", "pass --resume")
    assert tree_hash(work) == before
    if (
        earlier != "run"
    ):  # --resume has no checkpoint to continue from: also refused, nothing touched
        rc, _, err = cli(capsys, *args, "--resume")
        assert_one_error_line(rc, err, "no LATEST checkpoint to resume from")
        assert tree_hash(work) == before


def test_an_out_dir_with_only_the_users_files_is_used_and_they_are_kept(work, capsys):
    out = work / "run"
    out.mkdir()
    (out / "NOTES.txt").write_text("mine\n")
    (out / "config.json").write_text('{"not": "bloom"}')
    _first_run(work, capsys)
    assert (out / "NOTES.txt").read_text() == "mine\n" and (
        out / "config.json"
    ).read_text() == '{"not": "bloom"}'
    assert (out / "model" / "model.safetensors").is_file()


def test_api_resume_with_another_tokenizer_is_refused(work, capsys):
    from minibloom.preprocessor import BloomCausalLMPreprocessor
    from minibloom.training.train import train_on_files

    out = _first_run(work, capsys)
    lm = BloomCausalLM.from_preset(str(latest_checkpoint(out / "checkpoints")))
    lm.preprocessor = BloomCausalLMPreprocessor(
        BloomTokenizer.from_file(default_tokenizer_path()), sequence_length=16
    )
    before = tree_hash(work)
    with pytest.raises(
        TrainingError,
        match=r"tokenizer\.json: the model's tokenizer .* differs from the run's \(8192 vs 8000",
    ):
        train_on_files(
            lm,
            [work / "corpus.txt"],
            out,
            sequence_length=16,
            batch_size=4,
            steps=4,
            resume=True,
            eval_every=0,
            progress=False,
            log=lambda *a: None,
        )
    assert tree_hash(work) == before
