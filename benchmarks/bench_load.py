"""Load time and peak memory of a bloom-560m-shaped F16 checkpoint: minibloom vs transformers.

    python benchmarks/bench_load.py [--dir DIR] [--keep]

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
Each case runs --repeat times, alternating libraries, and the fastest run is reported (the
machine may be shared). Ratios are minibloom / transformers for the same in-memory dtype: below 1 means minibloom is faster/smaller.

`load_case(...)` is importable so benchmarks/bench_forward.py can report the same numbers.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPE = dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)

# Peak RSS of the child itself: VmHWM (ru_maxrss can include what the parent used before exec).
_PEAK_MB = """def peak_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

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


def load_case(directory, library: str, dtype: str) -> dict:
    """Load `directory` with `library` ("minibloom" or "transformers") in a fresh process."""
    code = (_MINIBLOOM if library == "minibloom" else _TRANSFORMERS).replace("{peak_mb}", _PEAK_MB)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, str(directory), dtype], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise RuntimeError(f"{library} {dtype} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
        help="runs per case, alternating libraries; the fastest is reported",
    )
    args = ap.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench_load_")) / "bloom-560m-f16"
    try:
        if not (directory / "model.safetensors").exists():
            print(f"writing a bloom-560m-shaped F16 checkpoint to {directory} ...")
            write_checkpoint(directory)
        size = (directory / "model.safetensors").stat().st_size
        with open(directory / "model.safetensors", "rb") as f:  # warm the page cache for every case
            while f.read(1 << 24):
                pass
        print(f"checkpoint: {size / 1e9:.2f} GB F16, {SHAPE}")
        print(
            f"{'in-memory dtype':<16} {'minibloom s':>12} {'transformers s':>15} {'ratio':>7} {'mb RSS MB':>10} {'tf RSS MB':>10} {'ratio':>7}"
        )
        for dtype in ("float32", "float16"):
            runs = {"minibloom": [], "transformers": []}
            for _ in range(args.repeat):  # alternate, so background load hits both alike
                for library in runs:
                    runs[library].append(load_case(directory, library, dtype))
            ours, theirs = (
                min(runs[lib], key=lambda r: r["seconds"]) for lib in ("minibloom", "transformers")
            )
            print(
                f"{dtype:<16} {ours['seconds']:12.3f} {theirs['seconds']:15.3f} {ours['seconds'] / theirs['seconds']:7.2f} "
                f"{ours['peak_rss_mb']:10.0f} {theirs['peak_rss_mb']:10.0f} {ours['peak_rss_mb'] / theirs['peak_rss_mb']:7.2f}"
            )
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(directory.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
