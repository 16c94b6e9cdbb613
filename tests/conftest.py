"""Shared test helpers: golden-file paths, the reference-library skip, and assert_close."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for a hub lookup

# Property tests draw the same cases on every run and machine, so CI is reproducible; set
# HYPOTHESIS_PROFILE=explore to draw fresh random cases locally.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore")
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
REGEN_HINT = (
    "golden files are stale or missing: run `python tools/make_golden.py` (needs the [ref] extra)"
)


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


# Live-parity tests run when the reference libraries are installed (always in CI, see .ci/run).
requires_tokenizers = pytest.mark.skipif(
    not _have("tokenizers"), reason="HF tokenizers not installed (pip install -e '.[ref]')"
)
requires_numba = pytest.mark.skipif(
    not _have("numba"), reason="numba not installed (the fast tier's own tests)"
)
requires_transformers = pytest.mark.skipif(
    not _have("torch", "transformers"),
    reason="torch/transformers not installed (pip install -e '.[ref]')",
)


# The CLI flags of a tiny `train` run (1 block, hidden 24, the golden tokenizer): seconds, not minutes.
TINY_TRAIN = [
    "--tokenizer", str(GOLDEN / "tokenizer.json"), "--layers", "1", "--hidden", "24", "--heads", "3",
    "--seq-len", "16", "--batch-size", "4",
]  # fmt: skip


def golden_path(name: str) -> Path:
    """Path of a golden file; fails (not skips) with the regeneration hint if it is missing."""
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"{path} missing; {REGEN_HINT}")
    return path


def assert_close(name, got, ref, atol, rtol=0.0, where=None):
    """Compare arrays like llm.c's check_tensor: print the largest difference and where it is.

    `where` is an optional boolean mask selecting the positions to compare (e.g. non-pad tokens).
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    if where is not None:
        where = np.broadcast_to(where, got.shape)
        got, ref = got[where], ref[where]
    if got.size == 0:
        return 0.0
    diff = np.abs(got - ref)
    excess = diff - (atol + rtol * np.abs(ref))
    i = int(np.argmax(excess))
    maxdiff = float(diff.max())
    msg = (
        f"{name}: max |diff| {maxdiff:.3e} (worst at flat index {i}: got {got.flat[i]:.8g}, ref {ref.flat[i]:.8g}); "
        f"atol {atol:g} rtol {rtol:g}"
    )
    print(msg)
    assert excess.flat[i] <= 0, msg
    return maxdiff


def tree_digest(root) -> dict:
    """{relative path: sha256 of the bytes, or "<dir>"} of everything under root (hidden files
    included): compare before and after an operation to prove it left a user's files alone."""
    import hashlib

    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
