"""`import minibloom` on a read-only install, and without numba.

A read-only install cannot be made with chmod here (the suite runs as root, and root writes
anyway); what a read-only tree means to numba is that its in-tree cache directory
(`__pycache__` next to each kernel) cannot be created. So the package is copied to a temporary
directory whose every `__pycache__` is a regular file: numba's in-tree cache locator then fails
exactly as on a read-only file system, and numba falls back to its user-wide cache
($XDG_CACHE_HOME/numba). When that is unusable too, numba used to raise "cannot cache function
...: no locator available" at import time; minibloom.jit now compiles without a cache instead.
"""

import os
import shutil
import subprocess
import sys

from conftest import ROOT, golden_path, requires_numba

KERNEL_RUN = """
import numpy as np
import minibloom
from minibloom.dispatch import fast_or_reference
from minibloom.jit import use_numba
from minibloom.optim import adamw_update
p, g = np.ones(8, np.float32), np.full(8, 0.5, np.float32)
m, v = np.zeros(8, np.float32), np.zeros(8, np.float32)
f = np.float32
fast_or_reference(adamw_update)(p, g, m, v, decay=f(1.0), one_minus_b1=f(0.1), b2=f(0.999), one_minus_b2=f(0.001),
                                bc2_sqrt=f(0.0316), eps=f(1e-8), step_size=f(1e-2))
print("numba" if use_numba() else "plain", float(p[0]))
"""


def _read_only_copy(tmp_path):
    """The package copied to tmp_path/pkg, each __pycache__ replaced by a file (no cache can go there)."""
    root = tmp_path / "pkg"
    shutil.copytree(
        ROOT / "minibloom", root / "minibloom", ignore=shutil.ignore_patterns("__pycache__")
    )
    for d in [root / "minibloom", *(p for p in (root / "minibloom").rglob("*") if p.is_dir())]:
        (d / "__pycache__").write_bytes(b"")
    return root


def _run(root, code, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1", **env_extra)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


@requires_numba
def test_read_only_tree_falls_back_to_the_user_cache(tmp_path):
    root = _read_only_copy(tmp_path)
    proc = _run(
        root, KERNEL_RUN, XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path / "home")
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "numba"
    assert list((tmp_path / "cache" / "numba").rglob("*.nbi")), (
        "numba did not cache in the user-wide directory"
    )
    assert not [
        p for p in (root / "minibloom").rglob("*") if p.is_dir() and p.name == "__pycache__"
    ]


@requires_numba
def test_no_writable_cache_anywhere_compiles_without_a_cache(tmp_path):
    """Before minibloom.jit caught it, this import failed: RuntimeError "no locator available"."""
    root = _read_only_copy(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    code = (
        KERNEL_RUN
        + f"""
from minibloom.tokenizer import BloomTokenizer
print(BloomTokenizer.from_file({str(golden_path("tokenizer.json"))!r}).encode("hello world"))
"""
    )
    proc = _run(root, code, XDG_CACHE_HOME=str(blocker / "cache"), HOME=str(blocker))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[0] == "numba"
    from minibloom.tokenizer import BloomTokenizer

    assert lines[1] == str(
        BloomTokenizer.from_file(golden_path("tokenizer.json")).encode("hello world")
    )
    assert not list(tmp_path.rglob("*.nbi"))


def test_import_and_kernels_without_numba(tmp_path):
    """numba blocked (as if not installed): jit.njit returns the plain function, use_numba() is False."""
    code = "import sys\nsys.modules['numba'] = None\n" + KERNEL_RUN
    proc = _run(ROOT, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "plain"
    with_numba = _run(ROOT, KERNEL_RUN)
    assert with_numba.stdout.split()[1] == proc.stdout.split()[1]  # the twins agree


def test_minibloom_numba_0_still_forces_plain(tmp_path):
    proc = _run(ROOT, KERNEL_RUN, MINIBLOOM_NUMBA="0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "plain"
