"""How much memory is free, and the one check that runs before any allocation sized by a user number.

Every path that allocates from a number a user typed (a KV cache for `--max-length`, the logits
of `predict`, the windows of `evaluate --seq-len`, the random init of a huge `--config`) calls
`check_fits(nbytes, what)` first, so a typo ends in one `ArgumentError` line instead of an
out-of-memory kill or a swap storm.

Leaves out: accounting for memory that is already committed by this process, and non-Linux
systems' notion of "available" (there: physical memory, or no check when it is unknown).
"""

import os

from minibloom.errors import ArgumentError

FRACTION = 0.8  # refuse a single allocation above this share of the available memory


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else physical memory, else None (unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, hint: str = "") -> None:
    """Raise ArgumentError if `nbytes` (what: e.g. "max_length 10**7: the KV cache for 1 row(s)")
    exceeds FRACTION of the available memory. `hint` says which number to lower."""
    have = available_memory_bytes()
    if have is not None and nbytes > FRACTION * have:
        raise ArgumentError(
            f"{what} would need {nbytes / 2**30:.1f} GiB, but only {have / 2**30:.1f} GiB of memory is available"
            + (f"; {hint}" if hint else "")
        )
