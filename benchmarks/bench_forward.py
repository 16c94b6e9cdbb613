"""Prefill time and peak memory of a bloom-560m-shaped model: minibloom vs transformers.

    python benchmarks/bench_forward.py [--dir DIR] [--keep] [--batches 1 8]
                                       [--heads hidden last full] [--rounds 3]
                                       [--threads 2] [--contended] [--no-load]

Model: 24 layers, hidden 1024, 16 heads, vocabulary 250880, random weights, written once as an
F16 checkpoint by benchmarks/bench_load.py and loaded by both libraries as float32, so both run
the same float32 weights. Input: a 128-token prompt (random ids, no padding) at each batch size.
Three heads are measured:

    hidden  the final hidden states only, (B, 128, C): the transformer without the LM head
            (minibloom `backbone.forward(...).hidden`, transformers `model.transformer(...)`)
    last    logits of the last position only, (B, 1, V): what generation's prefill needs
            (minibloom `logits(hidden[:, -1:])`, transformers `logits_to_keep=1`)
    full    logits of every position, (B, 128, V) (1 GB at batch 8): what scoring needs

Both sides run without a KV cache (use_cache=False). Each library runs in one worker process
that loads the model once (threads and waiting policy from benchmarks/common.py: the same
thread count for torch, OpenBLAS, OpenMP and numba, passive OpenMP waiting) and then times one
call per request. For every case both workers first run one untimed warm-up call (the first
minibloom call also loads numba's cached kernels), then `--rounds` timed calls each, the two
libraries taking turns and alternating which goes first (common.interleave). A case's time is
the median of its rounds; its peak memory is the process's peak RSS during the case's calls
(VmHWM, reset before each call through /proc/self/clear_refs; it includes the ~2.2 GB of float32
weights and the imported libraries). Ratios are minibloom / transformers: below 1 means minibloom
is faster or smaller. `--contended` runs everything beside one busy process (common.contended).

The last row is the load time of the F16 checkpoint as float32 (bench_load.load_row: a fresh
process per load, two per library, interleaved, median; skip it with --no-load). The machine line (CPU, load
average, busy process or not) is printed at the start and the end.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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

PROMPT_LEN = 128
LIBRARIES = ("minibloom", "transformers")

# Both workers: read "B head" lines, run that case once, answer {"seconds", "peak_mb"}.
_WORKER = """
import json, os, sys, time
import numpy as np
directory, T, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass

{peak_mb}
{setup}
print("ready", flush=True)
for line in sys.stdin:
    B, head = int(line.split()[0]), line.split()[1]
    ids, mask = inputs(B)
    reset_peak()
    t = time.perf_counter()
    out = run(ids, mask, head)
    seconds = time.perf_counter() - t
    del out
    print(json.dumps(dict(seconds=seconds, peak_mb=peak_mb())), flush=True)
"""

_MINIBLOOM = """
from minibloom.causal_lm import BloomCausalLM
bb = BloomCausalLM.from_preset(directory, dtype="float32", preprocessor=None).backbone
def inputs(B):
    ids = np.random.default_rng(0).integers(0, bb.config.vocab_size, size=(B, T))
    return ids, np.ones((B, T), dtype=bool)
def run(ids, mask, head):
    hidden = bb.forward(ids, mask).hidden
    if head == "hidden":
        return hidden
    return bb.logits(hidden[:, -1:] if head == "last" else hidden)
"""

_TRANSFORMERS = """
import torch
from transformers import BloomForCausalLM
torch.set_num_threads(threads)
model = BloomForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
def inputs(B):
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(B, T))
    return torch.tensor(ids), torch.ones((B, T), dtype=torch.int64)
def run(ids, mask, head):
    with torch.inference_mode():
        if head == "hidden":
            return model.transformer(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        keep = 1 if head == "last" else 0
        return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
"""


class Worker:
    """One library's worker process: the model loaded once, one timed call per `run`."""

    def __init__(self, library, directory, threads):
        self.library = library
        setup = _MINIBLOOM if library == "minibloom" else _TRANSFORMERS
        code = _WORKER.replace("{setup}", setup).replace("{peak_mb}", PEAK_MB_SOURCE)
        args = [sys.executable, "-c", code, str(directory), str(PROMPT_LEN), str(threads)]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=thread_env(threads),
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{library} worker failed to load the model (see its stderr above)")

    def run(self, batch, head):
        self.proc.stdin.write(f"{batch} {head}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.library} batch {batch} {head} failed (see stderr above)")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(workers, batch, head, rounds):
    """{library: (median seconds, peak MB)} for one case, libraries interleaved round by round."""
    runs = {lib: [] for lib in workers}
    for lib in workers:  # warm-up, untimed
        runs[lib].append(workers[lib].run(batch, head))
    times = {lib: [] for lib in workers}
    for _, order in interleave(rounds, workers):
        for lib in order:
            r = workers[lib].run(batch, head)
            runs[lib].append(r)
            times[lib].append(r["seconds"])
    return {lib: (median(times[lib]), max(r["peak_mb"] for r in runs[lib])) for lib in workers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dir", type=Path, default=None, help="reuse/write the F16 checkpoint here, not a temp dir"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary checkpoint")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument(
        "--heads",
        nargs="+",
        default=["hidden", "last", "full"],
        choices=["hidden", "last", "full"],
        help="what to compute (see above)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed calls per case and library (median)"
    )
    ap.add_argument("--no-load", action="store_true", help="skip the load-time row")
    add_common_args(ap)
    args = ap.parse_args(argv)

    import bench_load

    directory = args.dir or Path(tempfile.mkdtemp(prefix="minibloom-bench-"))
    workers = {}
    try:
        if not (directory / "config.json").exists():
            print(f"writing a bloom-560m-shaped F16 checkpoint to {directory} ...", flush=True)
            bench_load.write_checkpoint(directory)
        bench_load.warm_page_cache(directory)
        with contended(args.contended) as busy:
            print(machine_line(busy), flush=True)
            print(
                f"prefill of a {PROMPT_LEN}-token prompt, bloom-560m shape, float32, "
                f"{args.threads} threads, no KV cache; median of {args.rounds} interleaved rounds"
            )
            for lib in LIBRARIES:
                workers[lib] = Worker(lib, directory, args.threads)
            print(
                f"{'case':<16}{'minibloom s':>13}{'torch s':>10}{'ratio':>8}"
                f"{'minibloom MB':>15}{'torch MB':>10}{'ratio':>8}"
            )
            for head in args.heads:
                for batch in args.batches:
                    r = measure(workers, batch, head, args.rounds)
                    (ms, mm), (ts, tm) = r["minibloom"], r["transformers"]
                    print(
                        f"{f'B={batch} {head}':<16}{ms:>13.3f}{ts:>10.3f}{ms / ts:>8.2f}"
                        f"{mm:>15.0f}{tm:>10.0f}{mm / tm:>8.2f}",
                        flush=True,
                    )
            for w in workers.values():
                w.close()
            if not args.no_load:
                row = bench_load.load_row(directory, "float32", 2, args.threads)
                (ms, mm), (ts, tm) = row["minibloom"], row["transformers"]
                print(
                    f"{'load F16->f32':<16}{ms:>13.3f}{ts:>10.3f}{ms / ts:>8.2f}"
                    f"{mm:>15.0f}{tm:>10.0f}{mm / tm:>8.2f}"
                )
            print(machine_line(busy), flush=True)
    finally:
        for w in workers.values():
            w.close()
        if args.dir is None and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
