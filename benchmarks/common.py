"""What every benchmark shares: the machine line, thread settings, `--contended`, medians.

    from common import add_common_args, machine_line, thread_env, contended, median

- `add_common_args(ap)` adds `--threads` (default 2) and `--contended` (start one CPU-bound
  process for the whole run, to measure how each library holds up when another job takes a core).
- `thread_env(threads)` is the environment both libraries run under: the same thread count for
  OpenBLAS, OpenMP (torch), MKL and numba, passive OpenMP waiting (idle spinning threads of one
  library would otherwise steal a core from the other), OpenBLAS's short idle timeout (what
  `import minibloom` sets for the CLI) and no hub lookups.
- `contended(on)` is a context manager that starts (and always stops) the busy process.
- `machine_line()` names the CPU model, the core count, the load average and whether a busy
  process runs: print it at the start and the end of a run, so a table can be trusted or not.
- `median(xs)` of a list, and `interleave(rounds, libraries)`: the order of each round (the first
  library alternates, so background load hits both alike).

Ratios are what the scripts report (minibloom / reference, measured in the same run); absolute
times vary with the CPU model and the machine's load.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

_BUSY = "while True:\n    pass\n"  # one CPU-bound process: a core taken by another job


def add_common_args(ap, threads=2):
    ap.add_argument("--threads", type=int, default=threads, help="threads for every library")
    ap.add_argument(
        "--contended",
        action="store_true",
        help="run with one competing CPU-bound process (robustness under outside load)",
    )
    return ap


def thread_env(threads, base=None):
    """The environment for a benchmark subprocess (or this process, before numpy/torch load)."""
    env = dict(os.environ if base is None else base)
    env.update({var: str(threads) for var in THREAD_VARS})
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # what `import minibloom` sets before NumPy loads (the CLI's setting: see minibloom/__init__.py);
    # the workers import NumPy first. torch and CTranslate2 do not use NumPy's OpenBLAS.
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    env["HF_HUB_OFFLINE"] = "1"
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def set_threads(threads):
    """thread_env applied to this process: call before numpy, numba or torch are imported."""
    os.environ.update(thread_env(threads))


@contextlib.contextmanager
def contended(on):
    """Start one busy process for the duration of the block when `on`; always stop it."""
    if not on:
        yield None
        return
    busy = subprocess.Popen([sys.executable, "-c", _BUSY])
    try:
        yield busy
    finally:
        busy.kill()
        busy.wait()


# The source of peak_mb() for a benchmark's subprocess: its peak RSS in MB, VmHWM from
# /proc/self/status (it starts afresh at exec; ru_maxrss can include what the parent used before).
PEAK_MB_SOURCE = """def peak_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def cpu_model():
    """The model name, with the family and model numbers when the name alone is vague (a cloud
    CPU may say just "AMD EPYC": family 25 is Zen 3 / Zen 4, family 26 Zen 5)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_flags():
    """The vector extensions that matter here (AVX-512, bf16 dot products), as one short string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "f16c", "amx_bf16")
                return " ".join(f for f in wanted if f in flags) or "no AVX2"
    except OSError:
        pass
    return "flags unknown"


def machine_line(busy=None):
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    state = "with one competing busy process" if busy is not None else "no competing process"
    return (
        f"machine: {cpu_model()} ({cpu_flags()}), {os.cpu_count()} CPUs; "
        f"load average {load} (1/5/15 min); {state}"
    )


def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def interleave(rounds, libraries):
    """[(round, order of libraries)]: the first library alternates from round to round."""
    libraries = list(libraries)
    return [
        (r, libraries[r % len(libraries) :] + libraries[: r % len(libraries)])
        for r in range(rounds)
    ]
