"""The one switch between the reference tier and the fast tier.

model.py calls every op as `ops.<name>(...)` with `ops` from here. For each call, `ops` hands out
the fast tier's function of that name (minibloom/kernels/ops.py) when the fast tier is on and
has one, else the reference function (minibloom/ops.py). Both have the same signature and agree
to float32 rounding (tested per function). The fast tier is on when numba can be imported and
the environment variable MINIBLOOM_NUMBA is not "0"; the choice is made at each call, so a test
can flip MINIBLOOM_NUMBA and compare the two tiers on the same model.

Functions outside ops.py that have a fast twin are listed in FAST and chosen with
`fast_or_reference(reference_function)`.

To read the math, read the reference modules: the fast tier only makes them faster.
"""

import importlib

from minibloom import ops as reference
from minibloom.jit import use_numba


class _Dispatch:
    """`dispatch.ops.name`: the fast version of reference.name when the fast tier is on, else reference.name."""

    def __init__(self, reference_module, fast_module_name):
        self._reference = reference_module
        self._fast_name = fast_module_name
        self._fast = None

    def __getattr__(self, name):
        if use_numba():
            if self._fast is None:
                self._fast = importlib.import_module(self._fast_name)
            fast = getattr(self._fast, name, None)
            if fast is not None:
                return fast
        return getattr(self._reference, name)


ops = _Dispatch(reference, "minibloom.kernels.ops")


# Every fast twin of a reference function outside ops.py: "module.function" -> (fast module, name).
FAST = {
    "minibloom.optim.adamw_update": ("minibloom.kernels.adamw", "adamw_update"),
    "minibloom.tokenizer.encode_texts": ("minibloom.kernels.bpe", "encode_texts"),
    "minibloom.samplers.top_k_indices": ("minibloom.kernels.sampling", "top_k_indices"),
    "minibloom.samplers.top_p_set": ("minibloom.kernels.sampling", "top_p_set"),
}


def fast_or_reference(reference):
    """The fast twin of the function `reference` (see FAST) when the fast tier is on, else `reference`."""
    twin = FAST.get(f"{reference.__module__}.{reference.__name__}")
    if twin is None or not use_numba():
        return reference
    return getattr(importlib.import_module(twin[0]), twin[1])
