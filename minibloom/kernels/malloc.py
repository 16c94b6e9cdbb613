"""Keep freed memory in the process (glibc malloc), for the training step's repeated arrays.

A training step allocates and frees the same set of arrays every step (activations, their
gradients, the parameter gradients): megabytes each. By default glibc serves blocks above a
sliding threshold with fresh mmap calls and returns freed memory at the top of the heap to the
system, so every step faults its arrays back in page by page: measured on the small training
shape of benchmarks/bench_train.py (L4/C256, 8 x 256 tokens), 26,600 page faults and ~25% of
the step. `keep_freed_memory()` raises the mmap threshold to glibc's maximum (32 MiB) and the
trim threshold to 1 GiB, so blocks are reused from the heap instead (2,400 faults per step).

The setting is process-wide and made once; the fast tier's backward ops call it (training only,
kernels/ops.py). Peak memory is unchanged (freed blocks are reused, not added to); what changes
is that up to 1 GiB of freed memory stays with the process between steps. Not glibc (musl,
macOS, Windows): nothing happens. MINIBLOOM_KEEP_FREED_MEMORY=0 turns it off.

Leaves out: other allocators, and arrays above 32 MiB (the logits, the embedding gradient),
which glibc always maps afresh.
"""

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Once per process: set the two glibc thresholds above. True when they are set."""
    global _done
    if _done:
        return True
    _done = True
    if os.environ.get("MINIBLOOM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
