"""The two tiers stay apart: the reference runs on NumPy + regex alone, the fast tier only adds speed.

- An import-graph scan (AST, every import statement, module level or inside a function) keeps the
  reference modules from importing numba, the fast tier (minibloom/kernels/) or product code; the
  only bridge is minibloom/dispatch.py, which picks a fast twin at call time.
- A subprocess with numba made unimportable runs the whole reference: import, tokenize, forward,
  backward, AdamW, every sampler, generate; and `MINIBLOOM_NUMBA=0` never loads a kernel module.
- Every fast twin named in dispatch is importable and has its reference's signature.
"""

import ast
import importlib
import inspect
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from minibloom import dispatch

REFERENCE = (
    "ops",
    "model",
    "losses",
    "kvcache",
    "optim",
    "samplers",
    "processors",
    "tokenizer",
    "config",
    "errors",
)
# What a reference module may import from the package: the other reference modules, the switch
# (dispatch, and jit for `use_numba`), and infrastructure without numerics: the one argument
# check, the one memory check, the one atomic writer / JSON reader.
ALLOWED = {f"minibloom.{m}" for m in REFERENCE} | {
    "minibloom",
    "minibloom.dispatch",
    "minibloom.jit",
    "minibloom.arguments",
    "minibloom.memory",
    "minibloom.io.files",
}
# Lazy imports inside one function that serves the keras-style API, each with its reason.
API_EXCEPTIONS = {
    (
        "tokenizer",
        "minibloom.io.presets",
    ): "BloomTokenizer.from_preset, the default model's tokenizer.json",
}
STDLIB_OK = {
    "math",
    "typing",
    "dataclasses",
    "json",
    "pathlib",
    "os",
    "importlib",
    "collections",
    "heapq",
    "codecs",
    "argparse",
    "stat",
    "tempfile",
    "inspect",
}


def _imports(path):
    """(module imported, line) for every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.lineno


@pytest.mark.parametrize(
    "module", REFERENCE + ("dispatch", "jit", "arguments", "memory", "io/files")
)
def test_reference_modules_import_only_numpy_regex_and_each_other(module):
    bad = []
    for name, line in _imports(ROOT / "minibloom" / f"{module}.py"):
        top = name.split(".")[0]
        if name.startswith("minibloom"):
            if name not in ALLOWED and (module, name) not in API_EXCEPTIONS:
                bad.append(f"line {line}: {name}")
        elif top not in {"numpy", "regex"} | STDLIB_OK and not (module == "jit" and top == "numba"):
            bad.append(f"line {line}: {name}")
    assert not bad, f"minibloom/{module}.py imports outside the reference tier: {bad}"


def test_every_fast_twin_has_its_references_signature():
    from minibloom import ops
    from minibloom.kernels import ops as fast_ops

    pairs = [
        (getattr(ops, n), getattr(fast_ops, n))
        for n in dir(fast_ops)
        if inspect.isfunction(getattr(fast_ops, n))
        and getattr(fast_ops, n).__module__ == fast_ops.__name__
        and hasattr(ops, n)
    ]
    assert len(pairs) >= 6  # linear, lm head, gelu x2, attention x2
    for key, (module, name) in dispatch.FAST.items():
        ref_module, ref_name = key.rsplit(".", 1)
        pairs.append(
            (
                getattr(importlib.import_module(ref_module), ref_name),
                getattr(importlib.import_module(module), name),
            )
        )
    for ref, fast in pairs:
        assert inspect.signature(ref) == inspect.signature(fast), (
            f"{fast.__module__}.{fast.__name__}"
        )


_NO_NUMBA = """
import sys
sys.modules["numba"] = None  # `import numba` now raises ImportError, as on a machine without it
import numpy as np
import minibloom
from minibloom import jit, samplers
from minibloom.causal_lm import BloomCausalLM
from minibloom.optim import AdamW
assert jit.numba is None and not jit.use_numba()
lm = BloomCausalLM.from_preset()
ids = lm.tokenizer.encode("ROMEO: what light")
assert lm.tokenizer.decode(ids) == "ROMEO: what light"
x = {"token_ids": np.array([ids[:-1]]), "padding_mask": np.ones((1, len(ids) - 1), bool)}
loss, grads = lm.loss_and_grads(x, np.array([ids[1:]]))
AdamW(1e-3).apply(lm.params, grads)
for s in ["greedy", samplers.TopKSampler(k=3, seed=0), samplers.TopPSampler(p=0.9, seed=0),
          samplers.RandomSampler(seed=0), samplers.BeamSampler(num_beams=2), samplers.ContrastiveSampler(k=3)]:
    lm.compile(sampler=s)
    assert lm.generate("ROMEO:", max_length=12).startswith("ROMEO:")
loaded = sorted(m for m in sys.modules if m.startswith("minibloom.kernels"))
assert loaded == [], loaded
print("reference ok", round(float(loss), 3))
"""


def _run(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_the_reference_runs_without_numba():
    r = _run(_NO_NUMBA)
    assert r.returncode == 0 and "reference ok" in r.stdout, r.stderr[-2000:]


def test_minibloom_numba_0_never_loads_a_kernel_module():
    code = _NO_NUMBA.replace('sys.modules["numba"] = None', "pass").replace(
        "assert jit.numba is None and not jit.use_numba()", "assert not jit.use_numba()"
    )
    r = _run(code, MINIBLOOM_NUMBA="0")
    assert r.returncode == 0 and "reference ok" in r.stdout, r.stderr[-2000:]
