"""Prefill latency and peak memory of a bloom-560m-shaped model: minibloom vs transformers.

    python benchmarks/bench_forward.py [--dir DIR] [--keep] [--batches 1 8] [--threads 2]

Model: 24 layers, hidden 1024, 16 heads, vocabulary 250880, random weights, written once as an
F16 checkpoint by benchmarks/bench_load.py and loaded by both libraries as float32, so both run
the same float32 weights. Input: a 128-token prompt (random ids, no padding) at batch 1 and 8.

Each case runs in a fresh subprocess (so ru_maxrss is that case's peak; it includes the weights,
~2.2 GB in float32, and the imported libraries) with the same thread count for both sides
(torch.set_num_threads, OPENBLAS/OMP/NUMBA_NUM_THREADS). Two heads are measured:

    last   logits of the last position only, (B, 1, V): what generation's prefill needs
           (minibloom `logits(hidden[:, -1:])`, transformers `logits_to_keep=1`)
    full   logits of every position, (B, 128, V) (1 GB at batch 8): what scoring/training needs

Both sides run without a KV cache (use_cache=False). The time is the best of `--repeat` runs
after one warm-up run (the first minibloom call also loads numba's cached kernels). Ratios are
minibloom / transformers: below 1 means minibloom is faster or smaller. The load time of the F16
checkpoint (memory-mapped, widened to float32) comes from bench_load.load_case.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

PROMPT_LEN = 128

_MINIBLOOM = """
import json, resource, sys, time
import numpy as np
from minibloom.causal_lm import BloomCausalLM
directory, B, T, head, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lm = BloomCausalLM.from_preset(directory, dtype="float32", preprocessor=None)
bb = lm.backbone
ids = np.random.default_rng(0).integers(0, bb.config.vocab_size, size=(B, T))
mask = np.ones((B, T), dtype=bool)
def run():
    hidden = bb.forward(ids, mask).hidden
    return bb.logits(hidden[:, -1:] if head == "last" else hidden)
times = []
for i in range(repeat + 1):
    t = time.perf_counter(); logits = run(); times.append(time.perf_counter() - t)
    del logits
print(json.dumps(dict(seconds=min(times[1:]), peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""

_TRANSFORMERS = """
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np, torch
from transformers import BloomForCausalLM
directory, B, T, head, repeat, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
model = BloomForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
ids = torch.tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, size=(B, T)))
mask = torch.ones((B, T), dtype=torch.int64)
def run():
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1 if head == "last" else 0).logits
times = []
for i in range(repeat + 1):
    t = time.perf_counter(); logits = run(); times.append(time.perf_counter() - t)
    del logits
print(json.dumps(dict(seconds=min(times[1:]), peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def forward_case(directory, library, batch, head, repeat, threads):
    """One prefill case in a fresh subprocess -> {"seconds", "peak_mb"}."""
    code = _MINIBLOOM if library == "minibloom" else _TRANSFORMERS
    n = str(threads)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS=n,
        OPENBLAS_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        NUMBA_NUM_THREADS=n,
    )
    args = [
        sys.executable,
        "-c",
        code,
        str(directory),
        str(batch),
        str(PROMPT_LEN),
        head,
        str(repeat),
        n,
    ]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{library} batch {batch} {head} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="reuse/write the F16 checkpoint here instead of a temp dir",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary checkpoint")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument(
        "--heads",
        nargs="+",
        default=["last", "full"],
        choices=["last", "full"],
        help="which logits to compute",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="timed runs per case (best is reported), after one warm-up",
    )
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries")
    args = ap.parse_args(argv)

    import bench_load

    directory = args.dir or Path(tempfile.mkdtemp(prefix="minibloom-bench-"))
    try:
        if not (directory / "config.json").exists():
            print(f"writing a bloom-560m-shaped F16 checkpoint to {directory} ...", flush=True)
            bench_load.write_checkpoint(directory)
        for f in directory.glob("*.safetensors"):  # warm the page cache so load times compare
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        print(
            f"prefill of a {PROMPT_LEN}-token prompt, bloom-560m shape, float32, {args.threads} threads, no KV cache"
        )
        print(
            f"{'case':<16}{'minibloom s':>13}{'torch s':>10}{'ratio':>8}{'minibloom MB':>15}{'torch MB':>10}{'ratio':>8}"
        )
        for head in args.heads:
            for batch in args.batches:
                m = forward_case(directory, "minibloom", batch, head, args.repeat, args.threads)
                t = forward_case(directory, "transformers", batch, head, args.repeat, args.threads)
                print(
                    f"{f'B={batch} {head}':<16}{m['seconds']:>13.3f}{t['seconds']:>10.3f}{m['seconds'] / t['seconds']:>8.2f}"
                    f"{m['peak_mb']:>15.0f}{t['peak_mb']:>10.0f}{m['peak_mb'] / t['peak_mb']:>8.2f}",
                    flush=True,
                )
        m = bench_load.load_case(directory, "minibloom", "float32")
        t = bench_load.load_case(directory, "transformers", "float32")
        print(
            f"{'load F16->f32':<16}{m['seconds']:>13.3f}{t['seconds']:>10.3f}{m['seconds'] / t['seconds']:>8.2f}"
        )
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
