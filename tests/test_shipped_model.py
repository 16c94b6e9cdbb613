"""The model shipped in weights/: a genuine BLOOM checkpoint, the CLI's default, and its card is true.

- transformers + tokenizers load it as it is and give minibloom's logits and token ids (live);
- the generate CLI, run as a user runs it, reproduces every sample recorded in the model card
  (written by tools/make_model_card.py), so a change that silently breaks the model fails here;
- it is what `from_preset()` and `python -m minibloom presets` give first, and it stays small.
"""

import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_close, requires_tokenizers, requires_transformers

from minibloom import BloomCausalLM
from minibloom.io.presets import default_model_dir, list_presets

# A sample in the card: ```console / $ python -m minibloom generate ... / output lines / ```
CARD_SAMPLE = re.compile(r"```console\n\$ (python -m minibloom generate [^\n]*)\n(.*?)\n```", re.S)
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nTous les êtres humains naissent libres. 人人生而自由"


def card_samples():
    return CARD_SAMPLE.findall((default_model_dir() / "README.md").read_text(encoding="utf-8"))


def test_shipped_model_is_the_default_and_small():
    d = default_model_dir()
    assert d.parent == ROOT / "weights"
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "loss_curve.png",
    } <= {p.name for p in d.iterdir()}
    assert sum(p.stat().st_size for p in d.iterdir()) < 25e6
    assert list_presets()[0][0] == "default" and list_presets()[0][2] == d
    lm = BloomCausalLM.from_preset()
    assert (
        lm.tokenizer is not None and lm.tokenizer.vocabulary_size() <= lm.backbone.config.vocab_size
    )


def test_card_has_greedy_samples_and_they_differ():
    samples = card_samples()
    assert sum("--sampler" not in cmd for cmd, _ in samples) >= 2  # greedy ones
    outputs = [out for _, out in samples]
    assert len(set(outputs)) == len(outputs) >= 6  # not one repeated degenerate string


@pytest.mark.parametrize("index", range(9))
def test_cli_reproduces_model_card_sample(index):
    samples = card_samples()
    if index >= len(samples):
        pytest.skip(f"the card has {len(samples)} samples")
    command, expected = samples[index]
    argv = shlex.split(command)[1:]  # drop the leading "python"
    run = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip("\n") == expected, (
        f"{command}\n--- card:\n{expected}\n--- now:\n{run.stdout}"
    )


@requires_tokenizers
def test_hf_tokenizers_gives_the_same_ids():
    import tokenizers

    d = default_model_dir()
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    ours = BloomCausalLM.from_preset().tokenizer
    for text in [TEXT, *(out for _, out in card_samples())]:
        assert ours.encode(text) == hf.encode(text).ids


@requires_transformers
def test_transformers_gives_the_same_logits():
    import torch
    import transformers

    d = default_model_dir()
    lm = BloomCausalLM.from_preset()
    ids = np.asarray([lm.tokenizer.encode(TEXT)], dtype=np.int64)
    mask = np.ones_like(ids, dtype=bool)
    hf = transformers.BloomForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))
        ).logits.numpy()
    got = lm.predict({"token_ids": ids, "padding_mask": mask})
    assert_close("shipped model logits vs transformers", got, ref, atol=1e-4, rtol=1e-5)


def test_readme_first_command_prints_what_the_readme_shows():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command, shown = re.search(
        r"```bash\n(pip install[^\n]*)\n```\n\n```text\n(.*?)\n```", readme, re.S
    ).groups()
    argv = shlex.split(command.split("&&")[1])[1:]  # python -m minibloom generate "ROMEO:"
    run = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.rstrip("\n") == shown, run.stderr
    assert len(set(shown.splitlines())) == len(shown.splitlines())  # no line repeated: no loop


def test_a_wheel_installed_in_a_fresh_venv_ships_the_model(tmp_path):
    """Build a wheel from a copy of the sources, install it (no dependencies: the venv sees this
    interpreter's site-packages for numpy & co.) and generate from another directory."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "minibloom", src / "minibloom", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "weights", src / "weights")
    wheels = tmp_path / "wheels"

    def run(*argv, cwd=tmp_path):
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{argv}: {out.stderr[-2000:]}"
        return out.stdout

    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(src),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
    )
    (wheel,) = wheels.glob("minibloom-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    py = str(venv / "bin" / "python")
    run(py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(py, "-c", "import minibloom; print(minibloom.__file__)", cwd=elsewhere)
    assert where.startswith(str(venv)), where  # the wheel's copy, not this checkout
    presets = run(py, "-m", "minibloom", "presets", cwd=elsewhere)
    assert presets.splitlines()[0].startswith("default"), presets  # listed first
    assert str(venv) in presets  # found under the venv's share/minibloom/weights
    text = run(py, "-m", "minibloom", "generate", "ROMEO:", "--max-new-tokens", "8", cwd=elsewhere)
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:\n")


def test_a_weights_directory_without_a_model_does_not_hide_the_shipped_one(tmp_path, monkeypatch):
    """A candidate that merely exists (another package's weights/ in site-packages, an empty
    share/minibloom/weights left by an uninstall) is passed over for one that holds a model."""
    from minibloom.io import presets

    (tmp_path / "repo" / "weights").mkdir(parents=True)  # exists, holds no model
    shipped = tmp_path / "prefix" / "share" / "minibloom" / "weights"
    (shipped / "tiny").mkdir(parents=True)
    (shipped / "tiny" / "config.json").write_text("{}")
    monkeypatch.setattr(presets, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert presets._find_weights_dir() == shipped
