"""Training faults: writers killed mid-write, resume after SIGKILL, disk full, non-finite loss.

What is checked, and how:
  * Real child processes (os.fork: no interpreter start-up, so tens of kills cost seconds) write
    training checkpoints or model presets in a loop and are killed with SIGKILL after a seeded
    random delay. After every kill the directory must hold only complete checkpoints, LATEST must
    name one whose bytes equal what was saved at that step, and it must never go back.
  * The same writers are also killed deterministically *at every step boundary* of one write
    (before each mkdtemp / mkstemp / fsync / rename / rmtree), which random delays can miss.
  * fsync discipline: every file is flushed before it is renamed into place, a directory is
    flushed before it is renamed, and the parent after (so a crash, even a power cut, cannot
    expose a renamed-but-empty file).
  * A training run killed at a random step and resumed (API and `python -m minibloom train
    --resume`) ends bit-identical to an uninterrupted run.
  * Disk-full / permission errors (simulated: the tests run as root, where chmod does not stop
    writes) give one clear error naming the path and leave the previous checkpoint intact.
  * A diverging `train` command stops with a one-line message, exit status 2, and keeps the last
    good checkpoint loadable.

Left out: real power cuts (fsync order is checked instead), other file systems than the one the
tests run on, and Windows (no fork; the tests are skipped there).
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import pytest
from conftest import ROOT, TINY_TRAIN, golden_path
from test_train import _trainer

from minibloom.causal_lm import BloomCausalLM
from minibloom.errors import CheckpointError, TrainingError
from minibloom.io.safetensors import read_safetensors
from minibloom.model import BloomBackbone
from minibloom.optim import AdamW
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.tokenizer import BloomTokenizer
from minibloom.training.train import ArrayDataset, Trainer, latest_checkpoint

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="the kill tests fork child processes (POSIX only)"
)

CHECKPOINT_FILES = {"model.safetensors", "optimizer.safetensors", "state.json", "config.json"}
OPTIONAL_FILES = {"tokenizer.json", "generation_config.json"}  # when the model has them


# ------------------------------------------------------------------------------------------------
# child processes
# ------------------------------------------------------------------------------------------------


def _fork(work):
    """Run work() in a forked child that exits 0 when it returns (1 on an exception); its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _kill_after(pid, delay):
    """SIGKILL the child after `delay` seconds (it may have finished already); True if it was killed."""
    time.sleep(delay)
    try:
        os.kill(
            pid, signal.SIGKILL
        )  # an exited but unreaped child is a zombie: the kill is a no-op
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _exit_code(pid):
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


# Every step boundary of a write: the child dies just before the n-th call of one of these.
_BOUNDARIES = [
    (os, "fsync"),
    (os, "replace"),
    (shutil, "rmtree"),
    (tempfile, "mkdtemp"),
    (tempfile, "mkstemp"),
]


def _die_at_boundary(n):
    """In a child: patch the file-system calls so that the n-th one (from 0) SIGKILLs the process."""
    count = [0]

    def wrap(original):
        def call(*args, **kwargs):
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
            return original(*args, **kwargs)

        return call

    for module, name in _BOUNDARIES:
        setattr(module, name, wrap(getattr(module, name)))


@pytest.fixture
def fork_env(monkeypatch):
    """The setting of every fork test; forked children inherit it.

    numba's parallel kernels run on GNU OpenMP, which aborts a forked child that uses them after
    the parent did: children take the plain NumPy path (MINIBLOOM_NUMBA=0). A killed process
    loses nothing from the page cache, so fsync changes nothing these tests can see: it is a
    no-op, for speed on a busy disk (its order is checked by
    test_every_file_is_flushed_before_it_is_renamed).
    """
    monkeypatch.setenv("MINIBLOOM_NUMBA", "0")
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def _hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------
# a checkpoint writer whose saved contents are a known function of the step
# ------------------------------------------------------------------------------------------------


def _writer(root, vocab=4096):
    """A Trainer used only to write checkpoints (a 1.4 MB model: a write takes long enough to be hit)."""
    lm = BloomCausalLM(
        BloomBackbone(vocabulary_size=vocab, num_layers=2, num_heads=4, hidden_dim=64, seed=0)
    )
    ids = np.zeros((2, 4), np.int64)
    return Trainer(
        lm, AdamW(1e-3), ArrayDataset({"token_ids": ids}, ids), batch_size=2, checkpoint_dir=root
    )


def _version(base, step):
    """What the writer saves at `step`: params, first and second moments, all exact float32."""
    s = np.float32(step)
    return (
        {k: a + s for k, a in base.items()},
        {k: a * np.float32(0.5) + s for k, a in base.items()},
        {k: np.abs(a) + s for k, a in base.items()},
    )


def _set_version(trainer, base, step):
    params, m, v = _version(base, step)
    for k, a in trainer.lm.params.items():
        a[...] = params[k]
    trainer.optimizer.load_state_dict({"step": step, "m": m, "v": v})


def _check_step_dir(path, expected_params, expected_m):
    """A visible step directory is complete and holds exactly what was saved at its step."""
    names = {p.name for p in path.iterdir()}
    assert CHECKPOINT_FILES <= names <= CHECKPOINT_FILES | OPTIONAL_FILES, (
        f"{path} is not complete: {names}"
    )
    assert json.loads((path / "state.json").read_text())["step"] == int(path.name[5:])
    params = read_safetensors(path / "model.safetensors")
    assert set(params) == set(expected_params)
    for k, (_, a) in params.items():
        assert np.array_equal(a, expected_params[k]), f"{path}: {k} differs from what was saved"
    moments = read_safetensors(path / "optimizer.safetensors")
    for k, a in expected_m.items():
        assert np.array_equal(moments[f"m.{k}"][1], a), f"{path}: m.{k} differs from what was saved"


def _check_checkpoints(root, expected, previous_step, fresh_trainer):
    """The invariants after a writer died. expected(step) -> (params, m). Returns LATEST's step (0: none)."""
    if not root.exists():
        assert previous_step == 0
        return 0
    visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert all(n == "LATEST" or re.fullmatch(r"step-\d{8}", n) for n in visible), visible
    for name in visible:
        if name != "LATEST":
            _check_step_dir(root / name, *expected(int(name[5:])))
    latest = latest_checkpoint(root)
    step = 0 if latest is None else int(latest.name[5:])
    assert step >= previous_step, (
        f"LATEST went back from step {previous_step} to {step}: a checkpoint was lost"
    )
    if latest is not None:  # and it loads through the ordinary resume path
        trainer = fresh_trainer()
        assert trainer.load_checkpoint() == latest and trainer.step == step
        params, m = expected(step)
        for k, a in trainer.lm.params.items():
            assert np.array_equal(a, params[k]), k
    return step


def test_sigkill_at_random_moments_of_checkpoint_writes(tmp_path, fork_env):
    """25 children each continue from LATEST and save checkpoints in a loop until killed."""
    root = tmp_path / "ck"
    base = {k: a.copy() for k, a in _writer(root).lm.params.items()}

    def expected(step):
        params, m, _ = _version(base, step)
        return params, m

    def save_loop():
        trainer = _writer(root)
        latest = latest_checkpoint(root)
        start = 1 if latest is None else int(latest.name[5:]) + 1
        for step in range(start, start + 1000):  # bounded, in case a kill never came
            _set_version(trainer, base, step)
            trainer.save_checkpoint()

    rng = np.random.default_rng(7)
    step = killed_mid_write = 0
    for _ in range(25):
        assert _kill_after(_fork(save_loop), rng.uniform(0.0, 0.3))
        killed_mid_write += (
            any(n.startswith(".step-") for n in _hidden(root)) if root.exists() else 0
        )
        step = _check_checkpoints(root, expected, step, lambda: _writer(root))
    print(
        f"25 kills, {killed_mid_write} left a half-written checkpoint behind; LATEST reached step {step}"
    )
    assert step > 0
    # the next save removes whatever the killed writers left
    trainer = _writer(root)
    _set_version(trainer, base, step + 1)
    trainer.save_checkpoint()
    assert _hidden(root) == []
    assert sorted(p.name for p in root.iterdir()) == [
        "LATEST",
        f"step-{step:08d}",
        f"step-{step + 1:08d}",
    ]


def test_sigkill_at_every_step_of_one_checkpoint_write(tmp_path, fork_env):
    """Kill the writer of step 3 just before each of its file-system calls, in turn."""
    base = {k: a.copy() for k, a in _writer(tmp_path, vocab=260).lm.params.items()}

    def expected(step):
        params, m, _ = _version(base, step)
        return params, m

    pristine = tmp_path / "pristine"
    trainer = _writer(pristine, vocab=260)
    for step in (1, 2):
        _set_version(trainer, base, step)
        trainer.save_checkpoint()

    def save_step_3(root, n):
        def work():
            t = _writer(root, vocab=260)
            t.last_checkpoint = "step-00000002"
            _set_version(t, base, 3)
            _die_at_boundary(n)
            t.save_checkpoint()

        return work

    outcomes = []
    for n in range(100):
        root = tmp_path / f"crash-{n}"
        shutil.copytree(pristine, root)
        code = _exit_code(_fork(save_step_3(root, n)))
        step = _check_checkpoints(root, expected, 2, lambda: _writer(root, vocab=260))
        outcomes.append(step)
        newest = max(
            p.name for p in root.glob("step-*")
        )  # step 3 may be complete without LATEST naming it
        # the next save cleans up after the killed writer and works
        t = _writer(root, vocab=260)
        _set_version(t, base, 4)
        t.save_checkpoint()
        assert _hidden(root) == [], f"crash point {n}: leftovers {_hidden(root)}"
        assert sorted(p.name for p in root.iterdir()) == ["LATEST", newest, "step-00000004"]
        if code == 0:  # n is past the last call: the write completed
            break
        assert code == -signal.SIGKILL
    else:
        pytest.fail("the write never completed")
    print(f"{len(outcomes) - 1} crash points; LATEST after each: {outcomes}")
    assert outcomes[0] == 2 and outcomes[-1] == 3 and len(outcomes) > 15
    assert outcomes == sorted(outcomes)  # LATEST switches once, atomically


def test_stale_temporaries_are_ignored_and_cleaned(tmp_path):
    root = tmp_path / "ck"
    trainer = _writer(root, vocab=260)
    trainer.save_checkpoint()  # step 0
    (root / ".step-00000009.abc.tmp").mkdir()
    (root / ".step-00000009.abc.tmp" / "params.safetensors").write_bytes(
        b"\x00" * 10
    )  # half-written
    (root / ".LATEST.xyz.tmp").write_text("step-00000009\n")
    assert latest_checkpoint(root).name == "step-00000000"
    trainer.optimizer.step = 1
    trainer.save_checkpoint()
    assert _hidden(root) == [] and latest_checkpoint(root).name == "step-00000001"


# ------------------------------------------------------------------------------------------------
# fsync before rename
# ------------------------------------------------------------------------------------------------


def _record_fsync_and_replace(monkeypatch):
    """Record ("fsync", path) and ("replace", src, dst, src_is_dir) events, in order, while still doing them."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst), os.path.isdir(src)))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


def _check_flushed_before_renamed(events, out_dir):
    """Every file renamed into place was flushed before; every directory renamed into place was
    flushed after its last file and before its rename, and its parent flushed after it."""
    assert events, "nothing was written"
    renamed_to = {}
    for i, event in enumerate(events):
        if event[0] != "replace":
            continue
        _, src, dst, is_dir = event
        if is_dir:
            if os.path.basename(dst) == "model" and ".old" in os.path.dirname(dst):
                continue  # the previous model moved aside: already durable, dropped afterwards
            flushed = [j for j, e in enumerate(events[:i]) if e == ("fsync", src)]
            assert flushed, f"directory {src} renamed to {dst} without being flushed"
            inside = [
                j
                for j, e in enumerate(events)
                if e[0] == "replace" and e[2].startswith(src + os.sep)
            ]
            assert inside and max(inside) < flushed[-1], (
                f"{src} flushed before its last file was renamed in"
            )
            assert ("fsync", os.path.dirname(dst)) in events[i + 1 :], (
                f"{os.path.dirname(dst)} not flushed after the rename"
            )
        else:
            assert ("fsync", src) in events[:i], (
                f"{dst} renamed into place before its bytes were flushed"
            )
            assert ("fsync", os.path.dirname(dst)) in events[i + 1 :], (
                f"{os.path.dirname(dst)} not flushed after the rename"
            )
            renamed_to[dst] = i
    moved_dirs = [(e[1], e[2]) for e in events if e[0] == "replace" and e[3]]
    for path in (
        str(p) for p in out_dir.rglob("*") if p.is_file()
    ):  # each file got there by a flushed rename
        before = [
            src + path[len(dst) :] for src, dst in moved_dirs if path.startswith(dst + os.sep)
        ]
        assert path in renamed_to or any(b in renamed_to for b in before), (
            f"{path} was not written by a rename"
        )


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to name the flushed files"
)
def test_every_file_is_flushed_before_it_is_renamed(tmp_path, monkeypatch):
    tokenizer = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    trainer = _writer(tmp_path / "ck", vocab=260)
    trainer.lm.preprocessor = BloomCausalLMPreprocessor(tokenizer, sequence_length=8)
    for name, write in [
        ("ck", trainer.save_checkpoint),
        ("model", lambda: trainer.lm.save_to_preset(tmp_path / "model")),
        ("model", lambda: trainer.lm.save_to_preset(tmp_path / "model", max_shard_bytes=100_000)),
        ("assets", lambda: tokenizer.save_keras_assets(tmp_path / "assets")),
    ]:
        events = _record_fsync_and_replace(monkeypatch)
        write()
        monkeypatch.undo()
        _check_flushed_before_renamed(events, (tmp_path / name).resolve())
    assert (tmp_path / "model" / "model.safetensors.index.json").is_file()


# ------------------------------------------------------------------------------------------------
# model presets
# ------------------------------------------------------------------------------------------------


def _preset_lm(value):
    """A tiny model whose every parameter is `value` (so a loaded preset names its version), with a tokenizer."""
    lm = BloomCausalLM(
        BloomBackbone(vocabulary_size=260, num_layers=1, num_heads=4, hidden_dim=32, seed=0)
    )
    for a in lm.params.values():
        a[...] = value
    return lm


def _preset_version(directory):
    """The version a preset directory holds (checking it is complete and uniform), or None if absent."""
    if not directory.exists():
        return None
    lm = BloomCausalLM.from_preset(str(directory), preprocessor=None)
    values = {float(a.flat[0]) for a in lm.params.values()}
    assert len(values) == 1 and all((a == a.flat[0]).all() for a in lm.params.values()), (
        "a mix of versions"
    )
    return int(values.pop())


def test_sigkill_at_random_moments_of_preset_writes(tmp_path, fork_env):
    directory = tmp_path / "model"
    _preset_lm(1).save_to_preset(directory)
    (directory / "NOTES.txt").write_text("the user's own file")

    def save_loop():
        version = _preset_version(directory) or 1
        for v in range(version + 1, version + 1000):
            _preset_lm(v).save_to_preset(directory)

    rng = np.random.default_rng(11)
    version = 1
    for _ in range(15):
        assert _kill_after(_fork(save_loop), rng.uniform(0.0, 0.2))
        now = _preset_version(directory)  # completes a save killed after its commit point
        assert now >= version
        version = now
        assert (directory / "NOTES.txt").read_text() == "the user's own file"
    _preset_lm(version + 1).save_to_preset(directory)
    assert (
        _preset_version(directory) == version + 1
        and _hidden(directory) == []
        and _hidden(tmp_path) == []
    )


def test_sigkill_at_every_step_of_one_preset_write(tmp_path, fork_env):
    from minibloom.io.checkpoint import JOURNAL

    tokenizer_json = golden_path("tokenizer.json")
    pristine = tmp_path / "pristine" / "model"
    _preset_lm(1).save_to_preset(pristine)
    (pristine / "README.md").write_text("model card")

    def save_version_2(directory, n):
        def work():
            lm = _preset_lm(2)
            lm.preprocessor = BloomCausalLMPreprocessor(
                BloomTokenizer.from_file(tokenizer_json), sequence_length=8
            )
            _die_at_boundary(n)
            lm.save_to_preset(
                directory, max_shard_bytes=40_000
            )  # 3 shards + index: more boundaries

        return work

    outcomes, committed = [], 0
    for n in range(200):
        directory = tmp_path / f"crash-{n}" / "model"
        shutil.copytree(pristine, directory)
        code = _exit_code(_fork(save_version_2(directory, n)))
        journal = (directory / JOURNAL).exists()  # killed between the commit point and the end
        version = _preset_version(directory)  # from_preset completes such a save first
        assert version == (2 if journal else version), "a committed save must load as the new model"
        committed += journal
        outcomes.append(version)
        assert (directory / "README.md").read_text() == "model card"
        _preset_lm(4).save_to_preset(directory)
        assert _hidden(directory) == [] and _preset_version(directory) == 4
        if code == 0:
            break
        assert code == -signal.SIGKILL
    else:
        pytest.fail("the write never completed")
    print(
        f"{len(outcomes) - 1} crash points; version after each: {outcomes}; after the commit point: {committed}"
    )
    assert (
        committed >= 5
    )  # the renames of 3 shards, the index, config, ... happen after the commit point
    assert (
        outcomes[0] == 1
        and outcomes[-1] == 2
        and outcomes == sorted(outcomes)
        and len(outcomes) > 15
    )


# ------------------------------------------------------------------------------------------------
# resume after SIGKILL is bit-identical
# ------------------------------------------------------------------------------------------------


def test_training_killed_at_random_steps_resumes_bit_identical(tmp_path, fork_env):
    """Dropout on, 2-step gradient accumulation, a checkpoint every step; children killed at random.

    The reference and the children take the plain NumPy path (see fork_env); the `train` command
    test below kills a real numba-using process instead.
    """
    steps = 14
    reference = _trainer(tmp_path, "ref")
    reference.save_every = None
    started = time.perf_counter()
    seen = {0: ({k: a.copy() for k, a in reference.lm.params.items()}, None)}

    def record(t, loss, norm, lr):
        seen[t.step] = (
            {k: a.copy() for k, a in t.lm.params.items()},
            {k: a.copy() for k, a in t.optimizer.m.items()},
        )

    reference.run(max_steps=steps, on_step=record)
    duration = time.perf_counter() - started  # a child also saves every step: it takes longer

    def expected(step):
        return seen[step][0], seen[step][1] or {}

    def fresh():
        t = _trainer(tmp_path, "killed")
        t.save_every = 1
        return t

    def train():
        t = fresh()
        if latest_checkpoint(t.checkpoint_dir) is not None:
            t.load_checkpoint()
        t.run(max_steps=steps)

    rng = np.random.default_rng(3)
    step = kills = 0
    progress = []
    patience = (
        1.0  # doubled after a child that saved nothing, so a busy machine still makes progress
    )
    for _ in range(12):
        kills += _kill_after(_fork(train), rng.uniform(0.05, 0.4) * duration * patience)
        before, step = step, _check_checkpoints(tmp_path / "killed", expected, step, fresh)
        patience = 1.0 if step > before else 2 * patience
        progress.append(step)
        if step == steps:
            break
    resumed = fresh()
    resumed.load_checkpoint()
    resumed.run(max_steps=steps)
    print(f"{kills} kills; LATEST after each child: {progress}")
    assert kills >= 1 and progress[-1] > 0
    for k, a in reference.lm.params.items():
        np.testing.assert_array_equal(resumed.lm.params[k], a, err_msg=k)
        np.testing.assert_array_equal(resumed.optimizer.v[k], reference.optimizer.v[k], err_msg=k)
    assert resumed.history == reference.history


def _cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return [sys.executable, "-m", "minibloom", *args], env


def test_cli_train_killed_then_resumed_matches_uninterrupted(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(60))
    )
    common = [
        "train",
        "--data",
        str(corpus),
        *TINY_TRAIN,
        "--lr",
        "1e-2",
        "--steps",
        "16",
        "--eval-every",
        "4",
        "--eval-batches",
        "1",
        "--save-every",
        "1",
        "--no-progress",
    ]
    full_cmd, env = _cli(*common, "--out", str(tmp_path / "full"))
    killed_cmd, _ = _cli(*common, "--out", str(tmp_path / "killed"), "--resume")
    full = subprocess.Popen(full_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rng = np.random.default_rng(5)
    kill_at = int(rng.integers(2, 10))
    child = subprocess.Popen(
        killed_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = tmp_path / "killed" / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if latest.is_file() and int(latest.read_text().strip()[5:]) >= kill_at:
            time.sleep(
                rng.uniform(0.0, 0.05)
            )  # somewhere in the following step or its checkpoint write
            break
        time.sleep(0.01)
    child.send_signal(
        signal.SIGKILL
    )  # a no-op if the run already ended (then --resume has nothing to do)
    killed = child.wait() == -signal.SIGKILL
    stopped_at = latest_checkpoint(tmp_path / "killed" / "checkpoints")
    print(f"killed={killed} after step {kill_at}; LATEST then: {stopped_at and stopped_at.name}")
    assert killed or child.returncode == 0
    resumed = subprocess.run(killed_cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert full.wait() == 0, full.stderr.read()
    a = read_safetensors(tmp_path / "full" / "model" / "model.safetensors")
    b = read_safetensors(tmp_path / "killed" / "model" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(b[k][1], a[k][1], err_msg=k)
    assert (tmp_path / "killed" / "loss_curve.csv").read_text() == (
        tmp_path / "full" / "loss_curve.csv"
    ).read_text()


# ------------------------------------------------------------------------------------------------
# disk full, no permission, non-finite values
# ------------------------------------------------------------------------------------------------


def _failing(monkeypatch, module, name, err, when=lambda *a: True):
    original = getattr(module, name)

    def call(*args, **kwargs):
        if when(*args):
            raise OSError(err, os.strerror(err), str(args[0] if args else kwargs.get("dir")))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, call)


@pytest.mark.parametrize(
    "fault", ["fsync ENOSPC", "mkdtemp EACCES", "LATEST ENOSPC", "rename EROFS"]
)
def test_save_errors_name_the_path_and_keep_the_previous_checkpoint(tmp_path, monkeypatch, fault):
    root = tmp_path / "ck"
    trainer = _writer(root, vocab=260)
    base = {k: a.copy() for k, a in trainer.lm.params.items()}
    _set_version(trainer, base, 1)
    trainer.save_checkpoint()
    _set_version(trainer, base, 2)
    if fault == "fsync ENOSPC":
        _failing(monkeypatch, os, "fsync", errno.ENOSPC)
    elif fault == "mkdtemp EACCES":
        _failing(monkeypatch, tempfile, "mkdtemp", errno.EACCES)
    elif fault == "LATEST ENOSPC":
        _failing(
            monkeypatch,
            os,
            "replace",
            errno.ENOSPC,
            when=lambda src, dst: str(dst).endswith("LATEST"),
        )
    else:
        _failing(monkeypatch, os, "replace", errno.EROFS, when=lambda src, dst: os.path.isdir(src))
    with pytest.raises(TrainingError) as info:
        trainer.save_checkpoint()
    monkeypatch.undo()
    message = str(info.value)
    print(message)
    assert "\n" not in message and str(root / "step-00000002") in message
    assert (
        os.strerror(
            {"f": errno.ENOSPC, "m": errno.EACCES, "L": errno.ENOSPC, "r": errno.EROFS}[fault[0]]
        )
        in message
    )
    assert "step-00000001, which is intact" in message
    assert latest_checkpoint(root).name == "step-00000001"
    fresh = _writer(root, vocab=260)
    fresh.load_checkpoint()
    assert fresh.step == 1 and all(
        np.array_equal(a, base[k] + 1) for k, a in fresh.lm.params.items()
    )
    trainer.save_checkpoint()  # once the disk is fine again, the same trainer saves normally
    assert latest_checkpoint(root).name == "step-00000002" and _hidden(root) == []


def test_preset_save_error_keeps_the_old_model(tmp_path, monkeypatch):
    directory = tmp_path / "model"
    _preset_lm(1).save_to_preset(directory)
    _failing(monkeypatch, os, "fsync", errno.ENOSPC)
    with pytest.raises(
        CheckpointError,
        match=r"model: cannot save the model .*No space left on device.* is unchanged",
    ):
        _preset_lm(2).save_to_preset(directory)
    monkeypatch.undo()
    assert _preset_version(directory) == 1 and _hidden(tmp_path) == [] and _hidden(directory) == []


def test_non_finite_parameters_are_never_saved(tmp_path):
    trainer = _writer(tmp_path / "ck", vocab=260)
    trainer.save_checkpoint()
    trainer.optimizer.step = 1
    trainer.lm.params["ln_f.bias"][3] = np.nan
    with pytest.raises(
        TrainingError, match=r"step-00000001: not saved: parameter ln_f.bias holds non-finite"
    ):
        trainer.save_checkpoint()
    assert (
        latest_checkpoint(tmp_path / "ck").name == "step-00000000"
        and _hidden(tmp_path / "ck") == []
    )


def test_cli_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(60))
    )
    out = tmp_path / "run"
    cmd, env = _cli(
        "train",
        "--data",
        str(corpus),
        "--out",
        str(out),
        *TINY_TRAIN,
        "--lr",
        "1e30",
        "--eval-every",
        "0",
        "--save-every",
        "1",
        "--steps",
        "6",
        "--no-progress",
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(proc.stderr)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.match(
        r"minibloom: error: non-finite loss .* at step 2 .* the last good checkpoint is step-00000001",
        lines[0],
    )
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt.name == "step-00000001" and not (out / "model").exists()
    from minibloom.config import BloomConfig

    lm = BloomCausalLM(BloomBackbone.from_config(BloomConfig.from_json_file(ckpt / "config.json")))
    ids = np.zeros((4, 16), np.int64)
    trainer = Trainer(lm, AdamW(1e-3), ArrayDataset({"token_ids": ids}, ids), batch_size=4, seed=0)
    assert trainer.load_checkpoint(ckpt) == ckpt and trainer.step == 1
    assert all(np.isfinite(a).all() for a in lm.params.values())


def test_ctrl_c_right_after_a_periodic_save_does_not_rewrite_it(tmp_path, monkeypatch):
    """Re-saving the step LATEST names would briefly move that directory aside; it is not done."""
    trainer = _trainer(tmp_path, "ck", dropout=0.0, accumulate_steps=1)  # save_every=2
    saves = []
    save = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda: saves.append(trainer.step) or save())

    def ctrl_c(t, loss, norm, lr):
        if t.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="step 4; checkpoint saved to .*step-00000004"):
        trainer.run(max_steps=10, on_step=ctrl_c)
    assert saves == [2, 4] and latest_checkpoint(tmp_path / "ck").name == "step-00000004"
