"""Output: full or unwritable destinations, a file where a directory is wanted, closed or full streams.

Disk-full (ENOSPC) and permission (EACCES) errors are simulated by patching os / tempfile, as in
tests/test_crash_safety.py: the suite runs as root, where a read-only chmod does not stop writes.
Standard streams are real: child processes write to /dev/full, to a closed fd 1, or to a pipe
closed by its reader.
"""

import errno
import os
import subprocess
import sys
import tempfile

import pytest
from conftest import ROOT, TINY_TRAIN
from test_reliability_arguments import CORPUS, assert_one_error_line, cli, tiny_model_dir, tree_hash

from minibloom.training.train import latest_checkpoint

TRAIN = [
    *TINY_TRAIN,
    "--steps",
    "2",
    "--eval-every",
    "0",
    "--eval-batches",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return tmp_path


def _fail(monkeypatch, module, name, err, when=lambda *a, **k: True):
    original = getattr(module, name)

    def call(*args, **kwargs):
        if when(*args, **kwargs):
            raise OSError(err, os.strerror(err), str(args[0] if args else kwargs.get("dir")))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, call)


def test_disk_full_while_writing_the_token_cache_leaves_nothing(work, monkeypatch, capsys):
    before = tree_hash(work)
    _fail(monkeypatch, os, "fsync", errno.ENOSPC)
    rc, _, err = cli(capsys, "train", "--data", work / "corpus.txt", "--out", work / "run", *TRAIN)
    monkeypatch.undo()
    assert_one_error_line(
        rc, err, "token_cache", ".tokens: cannot write", "No space left on device"
    )
    assert tree_hash(work) == before  # the run directory it had created is gone again


def test_permission_denied_creating_the_out_dir(work, monkeypatch, capsys):
    from pathlib import Path

    before = tree_hash(work)
    _fail(monkeypatch, Path, "mkdir", errno.EACCES, when=lambda self, *a, **k: self.name == "run")
    rc, _, err = cli(capsys, "train", "--data", work / "corpus.txt", "--out", work / "run", *TRAIN)
    monkeypatch.undo()
    assert_one_error_line(
        rc, err, f"{work / 'run'}: cannot create the directory", "Permission denied"
    )
    assert tree_hash(work) == before


@pytest.mark.parametrize("target", ["loss_curve.csv", "model"])
def test_disk_full_at_the_end_of_a_run_keeps_the_checkpoints(work, monkeypatch, capsys, target):
    """The final writes fail: the loss curve, or any rename into / of the final model directory."""
    out = work / "run"

    def hits(src, dst):
        dst = os.path.abspath(dst)
        return dst == str(out / target) or (
            target == "model" and dst.startswith(str(out / "model") + os.sep)
        )

    _fail(monkeypatch, os, "replace", errno.ENOSPC, when=hits)
    rc, _, err = cli(capsys, "train", "--data", work / "corpus.txt", "--out", out, *TRAIN)
    monkeypatch.undo()
    assert_one_error_line(rc, err, str(out / target), "No space left on device")
    assert latest_checkpoint(out / "checkpoints").name == "step-00000002"
    assert not [p for p in out.rglob(".*") if p.name != "token_cache"], (
        "temporary files left behind"
    )
    rc, _, err = cli(
        capsys, "train", "--data", work / "corpus.txt", "--out", out, *TRAIN, "--resume"
    )
    assert rc == 0, err  # once there is room again, --resume finishes the run
    assert (out / "model" / "model.safetensors").is_file() and (out / "loss_curve.csv").is_file()


def test_loss_curve_uses_the_atomic_writer(tmp_path, monkeypatch):
    """write_loss_curve goes through io/files.write_bytes_atomic: flushed, renamed, nothing half-written."""
    import minibloom.io.files
    from minibloom.errors import TrainingError
    from minibloom.training.train import write_loss_curve

    history = {"step": [1, 2], "step_loss": [3.0, 2.5], "learning_rate": [1e-3, 1e-3]}
    (tmp_path / "loss_curve.csv").write_text("old curve\n")
    calls = []
    real = minibloom.io.files.write_bytes_atomic
    monkeypatch.setattr(
        minibloom.io.files,
        "write_bytes_atomic",
        lambda *a, **k: calls.append(a[0]) or real(*a, **k),
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    write_loss_curve(history, [(2, 2.7)], tmp_path, log=lambda *a: None)
    assert calls == [tmp_path / "loss_curve.csv"]
    assert (tmp_path / "loss_curve.csv").read_text().splitlines()[2].startswith("2,2.5,")
    _fail(monkeypatch, os, "fsync", errno.ENOSPC)
    with pytest.raises(TrainingError, match="loss_curve.csv: cannot write .No space left"):
        write_loss_curve(history, [], tmp_path, log=lambda *a: None)
    monkeypatch.undo()
    assert (tmp_path / "loss_curve.csv").read_text().startswith("step,") and sorted(
        os.listdir(tmp_path)
    ) == ["loss_curve.csv"]


def test_train_tokenizer_out(work, monkeypatch, capsys):
    rc, out, err = cli(
        capsys,
        "train-tokenizer",
        "--data",
        work / "corpus.txt",
        "--vocab-size",
        "300",
        "--out",
        work / "new" / "dir" / "tok.json",
    )
    assert rc == 0, err  # a missing directory is created
    assert (work / "new" / "dir" / "tok.json").is_file()
    before = tree_hash(work)
    _fail(monkeypatch, tempfile, "mkstemp", errno.EACCES)
    rc, _, err = cli(
        capsys,
        "train-tokenizer",
        "--data",
        work / "corpus.txt",
        "--vocab-size",
        "300",
        "--out",
        work / "new" / "dir",
    )
    monkeypatch.undo()
    assert_one_error_line(
        rc, err, str(work / "new" / "dir" / "tokenizer.json"), "Permission denied"
    )
    assert tree_hash(work) == before


def test_dump_disk_full_keeps_the_old_file(work, model, monkeypatch, capsys):
    target = work / "acts.npz"
    target.write_bytes(b"an earlier dump")
    _fail(monkeypatch, os, "fsync", errno.ENOSPC)
    rc, _, err = cli(capsys, "dump", model, "--prompt", "hi", "--out", target)
    monkeypatch.undo()
    assert_one_error_line(rc, err, f"{target}: cannot write", "No space left")
    assert target.read_bytes() == b"an earlier dump" and sorted(os.listdir(work)) == [
        "acts.npz",
        "corpus.txt",
    ]


# ------------------------------------------------------------------------------------------------
# standard streams, in real processes
# ------------------------------------------------------------------------------------------------


def _shell(command, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=timeout
    )


PY = f"'{sys.executable}' -m minibloom"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "command", ["generate Hello --preset {m} --max-length 8", "tokenize Hello", "presets"]
)
def test_a_full_stdout_is_one_line_and_a_failure(model, command):
    proc = _shell(f"{PY} {command.format(m=model)} > /dev/full")
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "minibloom: error: cannot write to standard output (No space left on device)"
    ]


@pytest.mark.parametrize(
    "command", ["generate Hello --preset {m} --max-length 8", "tokenize Hello"]
)
def test_a_closed_stdout_is_one_line_and_a_failure(model, command):
    proc = _shell(f"{PY} {command.format(m=model)} >&-")
    assert proc.returncode == 2, proc
    assert len(proc.stderr.splitlines()) == 1 and "standard output is closed" in proc.stderr, (
        proc.stderr
    )


def test_a_reader_that_goes_away_is_not_an_error(model):
    proc = _shell(
        f"{PY} tokenize \"$(yes hello | head -n 20000 | tr '\\n' ' ')\" | head -c 10 > /dev/null"
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_training_survives_a_full_stdout(work):
    proc = _shell(
        f"{PY} train --data {work / 'corpus.txt'} --out {work / 'run'} {' '.join(TRAIN)} > /dev/full"
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "warning: cannot write to standard output" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert (work / "run" / "model" / "model.safetensors").is_file()
