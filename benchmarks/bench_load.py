"""Load time and peak memory of a bloom-560m-shaped F16 checkpoint: minibloom vs transformers.

    python benchmarks/bench_load.py [--dir DIR] [--keep] [--repeat 3] [--threads 2] [--contended]

Writes a bloom-560m-shaped checkpoint (24 layers, hidden 1024, 16 heads, vocabulary 250880,
random weights stored as F16, ~1.1 GB) once into a temporary directory (or --dir), reads it once
so every run starts from a warm page cache, then loads it in fresh subprocesses, one per case:

    minibloom   BloomCausalLM.from_preset(dir, dtype="float32")   memory-mapped, F16 -> float32
    minibloom   BloomCausalLM.from_preset(dir, dtype="float16")   memory-mapped, kept as stored
    transformers BloomForCausalLM.from_pretrained(dir, dtype=torch.float32)
    transformers BloomForCausalLM.from_pretrained(dir, dtype=torch.float16)

Each subprocess times only the load call (imports excluded) and reports its peak RSS: VmHWM from
/proc/self/status, which starts afresh at exec (ru_maxrss does not: on Linux a child inherits the
parent's peak across fork + exec, which would charge it for the parent's memory); ru_maxrss
where /proc is missing. Both include the imported libraries (torch alone is a few hundred MB).
Each case runs --repeat times, the libraries taking turns and alternating which goes first
(benchmarks/common.py's interleave); the median time and the largest peak are reported. Both run
under common.thread_env (the same thread count, passive OpenMP waiting, no hub lookups);
`--contended` runs them beside one busy process. The machine line (CPU, load average, busy
process or not) is printed at the start and the end. Ratios are minibloom / transformers for the
same in-memory dtype: below 1 means minibloom is faster/smaller.

`write_checkpoint`, `warm_page_cache` and `load_case` are importable: benchmarks/bench_forward.py
reports the float32 load row with them.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    PEAK_MB_SOURCE,
    add_common_args,
    contended,
    interleave,
    machine_line,
    median,
    thread_env,
)

SHAPE = dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)

_PEAK_MB = PEAK_MB_SOURCE

_MINIBLOOM = """
import json, resource, sys, time
{peak_mb}from minibloom.causal_lm import BloomCausalLM
t = time.perf_counter()
lm = BloomCausalLM.from_preset(sys.argv[1], preprocessor=None, dtype=sys.argv[2])
seconds = time.perf_counter() - t
assert lm.params["word_embeddings.weight"].dtype.name == sys.argv[2]
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb()}))
"""

_TRANSFORMERS = """
import json, os, resource, sys, time
{peak_mb}os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import BloomForCausalLM
t = time.perf_counter()
model = BloomForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
seconds = time.perf_counter() - t
assert model.transformer.word_embeddings.weight.dtype == getattr(torch, sys.argv[2])
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb()}))
"""


def write_checkpoint(directory: Path) -> Path:
    """Random bloom-560m-shaped weights stored as F16 (generated in float16, ~1.1 GB)."""
    from minibloom.config import BloomConfig
    from minibloom.io.checkpoint import save_params
    from minibloom.model import param_shapes

    config = BloomConfig(**SHAPE)
    rng = np.random.default_rng(0)
    params = {}
    for name, shape in param_shapes(config).items():
        params[name] = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json_string())
    save_params(directory, params, dtype="float16")
    return directory


def warm_page_cache(directory):
    """Read every safetensors file once, so each load starts from a warm page cache."""
    for f in Path(directory).glob("*.safetensors"):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def load_case(directory, library: str, dtype: str, threads: int = 2) -> dict:
    """Load `directory` with `library` ("minibloom" or "transformers") in a fresh process."""
    code = (_MINIBLOOM if library == "minibloom" else _TRANSFORMERS).replace("{peak_mb}", _PEAK_MB)
    out = subprocess.run(
        [sys.executable, "-c", code, str(directory), dtype],
        capture_output=True,
        text=True,
        env=thread_env(threads),
    )
    if out.returncode:
        raise RuntimeError(f"{library} {dtype} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_row(directory, dtype, repeat, threads):
    """{library: (median seconds, largest peak MB)} over `repeat` interleaved loads."""
    runs = {"minibloom": [], "transformers": []}
    for _, order in interleave(repeat, runs):
        for library in order:
            runs[library].append(load_case(directory, library, dtype, threads))
    return {
        lib: (median([r["seconds"] for r in rs]), max(r["peak_rss_mb"] for r in rs))
        for lib, rs in runs.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="reuse/write the checkpoint here instead of a temp dir",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary checkpoint")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="loads per case and library, interleaved; the median is reported",
    )
    add_common_args(ap)
    args = ap.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench_load_")) / "bloom-560m-f16"
    try:
        if not (directory / "model.safetensors").exists():
            print(f"writing a bloom-560m-shaped F16 checkpoint to {directory} ...")
            write_checkpoint(directory)
        size = (directory / "model.safetensors").stat().st_size
        warm_page_cache(directory)
        with contended(args.contended) as busy:
            print(machine_line(busy), flush=True)
            print(f"checkpoint: {size / 1e9:.2f} GB F16, {SHAPE}; {args.threads} threads")
            print(
                f"{'in-memory dtype':<16} {'minibloom s':>12} {'transformers s':>15} {'ratio':>7} {'mb RSS MB':>10} {'tf RSS MB':>10} {'ratio':>7}"
            )
            for dtype in ("float32", "float16"):
                row = load_row(directory, dtype, args.repeat, args.threads)
                (ms, mm), (ts, tm) = row["minibloom"], row["transformers"]
                print(
                    f"{dtype:<16} {ms:12.3f} {ts:15.3f} {ms / ts:7.2f} {mm:10.0f} {tm:10.0f} {mm / tm:7.2f}",
                    flush=True,
                )
            print(machine_line(busy), flush=True)
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(directory.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
