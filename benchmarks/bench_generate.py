"""Greedy decoding speed on the bloom-560m shape: minibloom vs transformers and CTranslate2.

    python benchmarks/bench_generate.py [--batches 1 8] [--new 32] [--prompt 128] [--rounds 3]
                                        [--threads 2] [--contended] [--libraries ...]

Model: 24 layers, hidden 1024, 16 heads, vocabulary 250880, random weights drawn once by
minibloom (`init_params`, seed 0) and written to a temporary directory as HF checkpoints: float32,
float16 and bfloat16 (the same values, rounded), plus CTranslate2's conversions of the float32
one (float32 and int8, scripted below: `ctranslate2.converters.TransformersConverter`). Prompt:
128 random ids, no padding; then --new tokens, greedy, no stop token. Libraries:

    hf-f32, hf-bf16      transformers BloomForCausalLM.generate, dtype float32 / bfloat16
    ct2-f32, ct2-int8    CTranslate2 Generator.generate_batch, compute_type float32 / int8
    mb-f32               minibloom from the float32 checkpoint
    mb-f16, mb-bf16      minibloom from_preset(dtype="auto") of the F16 / BF16 checkpoint: the
                         16-bit words kept in memory, read by kernels/matvec16.py at decode

Each library runs in a subprocess of its own, started afresh for every round, with the same
thread counts (benchmarks/common.py's thread_env: --threads for OpenBLAS, OpenMP, MKL, numba and
CTranslate2's intra_threads). Why subprocesses: the three libraries bring three thread pools
(torch's OpenMP, numba's, CTranslate2's own libgomp) that in one process wait for or spin against
each other, and all seven models at once would need ~11 GB; a fresh process per run also keeps one
library's memory state from slowing the next. Since no other library's threads share the process,
the OpenMP waiting policy is left at each library's default (GNU OpenMP spins briefly before it
sleeps), as a user running one of them would have it, instead of common.py's PASSIVE (which is
for libraries sharing a process; measured here, PASSIVE costs ~40 us per parallel region against
~3 us, and a decode step has ~100 of them); set OMP_WAIT_POLICY to impose one on all. The rounds interleave the
libraries (the first one alternates), so background load hits all alike; the table gives the
median over rounds.

Reported per batch size B and library:
    prefill   seconds for the prompt forward + first token
    decode    tokens/s over the remaining steps, counting all B rows (B * (new - 1) / seconds)
    vs HF     decode tokens/s / the faster of transformers float32 and bfloat16
    vs CT2    decode tokens/s / CTranslate2 float32's (for the float32 libraries) or int8's
    bound     measured / the memory-bandwidth bound of decoding: a step reads every weight once,
              so tokens/s <= B * bandwidth / bytes of weights (2.24 GB in float32, 1.12 GB in 16
              bits, 0.56 GB in int8); bandwidth = the best of a numba sum over all threads and a
              1-thread NumPy sum over 1 GB, measured in a subprocess with the same threads

With --contended one extra CPU-bound process runs for the whole measurement (common.contended);
compare the "vs HF" column with a quiet run. Needs torch, transformers and ctranslate2 (the
`bench` extra: pip install -e '.[bench]'); --libraries leaves some out.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_common_args,
    contended,
    interleave,
    machine_line,
    median,
    thread_env,
)

LIBRARIES = ("hf-f32", "hf-bf16", "ct2-f32", "ct2-int8", "mb-f32", "mb-f16", "mb-bf16")
WEIGHT_BITS = {"f32": 32, "bf16": 16, "f16": 16, "int8": 8}
SHAPE = dict(vocab_size=250880, hidden_size=1024, n_head=16)
TOKENIZER = ROOT / "weights" / "tinybloom-5m" / "tokenizer.json"  # any BLOOM tokenizer: CT2 pads


def _args():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=32, help="new tokens")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--layers", type=int, default=24, help="(smaller for a quick check)")
    ap.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one library
    ap.add_argument("--dir", help="keep the checkpoints in DIR (made if missing) for later runs")
    return add_common_args(ap).parse_args()


# ------------------------------------------------------------------------------------------------
# preparing the checkpoints (once per run)
# ------------------------------------------------------------------------------------------------


def prepare(directory: Path, layers: int) -> None:
    """The same random weights as HF checkpoints in three dtypes and two CTranslate2 models."""

    from minibloom.config import BloomConfig
    from minibloom.io.checkpoint import save_params
    from minibloom.model import init_params

    config = BloomConfig(n_layer=layers, **SHAPE)
    params = init_params(config, seed=0)
    for dtype in ("float32", "float16", "bfloat16"):
        out = directory / dtype
        out.mkdir(exist_ok=True)
        save_params(out, params, dtype=dtype)
        (out / "config.json").write_text(config.to_json_string())
    (directory / "float32" / "tokenizer.json").write_bytes(TOKENIZER.read_bytes())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "float32" / "tokenizer_config.json").write_text(
        json.dumps({**special, "tokenizer_class": "BloomTokenizerFast"})
    )
    del params
    script = (
        "import sys, ctranslate2\n"
        "src, out, q = sys.argv[1:]\n"
        "ctranslate2.converters.TransformersConverter(src).convert(out, quantization=q)\n"
    )
    for quantization in ("float32", "int8"):
        subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(directory / "float32"),
                str(directory / f"ct2-{quantization}"),
                quantization,
            ],
            check=True,
            env=thread_env(2),
            stdout=subprocess.DEVNULL,
        )
        ct2_config = directory / f"ct2-{quantization}" / "config.json"
        settings = json.loads(ct2_config.read_text())
        if settings.get("layer_norm_epsilon") is None:  # not every converter version writes it
            settings["layer_norm_epsilon"] = config.layer_norm_epsilon
        ct2_config.write_text(json.dumps(settings))


# ------------------------------------------------------------------------------------------------
# one library in its own process: prints {"B": [prefill seconds, total seconds]} as JSON
# ------------------------------------------------------------------------------------------------


def _prompts(args):
    import numpy as np

    return {
        B: np.random.default_rng(B).integers(4, 250680, size=(B, args.prompt)) for B in args.batches
    }


def _run_minibloom(args, directory):
    import numpy as np

    from minibloom.causal_lm import BloomCausalLM
    from minibloom.generate import decode_steps
    from minibloom.samplers import GreedySampler

    stored = {"mb-f32": "float32", "mb-f16": "float16", "mb-bf16": "bfloat16"}[args.worker]
    lm = BloomCausalLM.from_preset(directory / stored, dtype="auto", preprocessor=None)

    def run(ids, new):
        mask = np.ones(ids.shape, dtype=bool)
        t0, first = time.perf_counter(), None
        for _ in decode_steps(lm.backbone, ids, mask, ids.shape[1] + new, GreedySampler(), (), 3):
            first = time.perf_counter() - t0 if first is None else first
        return first, time.perf_counter() - t0

    return run


def _run_transformers(args, directory):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.worker == "hf-f32" else torch.bfloat16
    model = transformers.BloomForCausalLM.from_pretrained(directory / "float32", dtype=dtype)
    model.eval()

    def run(ids, new):
        x = torch.from_numpy(ids)
        kw = dict(
            attention_mask=torch.ones_like(x),
            do_sample=False,
            eos_token_id=None,
            pad_token_id=3,
            min_new_tokens=0,
        )
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(x, max_new_tokens=1, **kw)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(x, max_new_tokens=new, **kw)
            total = time.perf_counter() - t0
        assert out.shape[1] == ids.shape[1] + new
        return first, total

    return run


def _run_ctranslate2(args, directory):
    import ctranslate2

    quantization = {"ct2-f32": "float32", "ct2-int8": "int8"}[args.worker]
    path = directory / f"ct2-{quantization}"
    generator = ctranslate2.Generator(
        str(path),
        device="cpu",
        compute_type=quantization,
        inter_threads=1,
        intra_threads=args.threads,
    )
    vocab = json.loads((path / "vocabulary.json").read_text(encoding="utf-8"))

    def generate(tokens, new):
        results = generator.generate_batch(
            tokens,
            max_length=new,
            min_length=new,
            include_prompt_in_result=False,
            sampling_topk=1,
            end_token=[],
        )
        assert all(len(r.sequences_ids[0]) == new for r in results), [
            len(r.sequences_ids[0]) for r in results
        ]

    def run(ids, new):
        tokens = [[vocab[i] for i in row] for row in ids.tolist()]
        t0 = time.perf_counter()
        generate(tokens, 1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        generate(tokens, new)
        return first, time.perf_counter() - t0

    return run


def worker(args):
    directory = Path(args.dir)
    make = {"hf": _run_transformers, "ct2": _run_ctranslate2, "mb": _run_minibloom}
    run = make[args.worker.split("-")[0]](args, directory)
    result = {}
    for B, ids in _prompts(args).items():
        run(ids[:, :8], 3)  # warm-up: kernels compiled or loaded, weights paged in
        result[B] = run(ids, args.new)
    print(json.dumps(result))


def measure_bandwidth():
    """Read bandwidth in bytes/s: the best of a numba sum (blocks of 256 rows of 4 KB over all
    threads, each row summed by a vectorised loop) and NumPy's sum (one thread), over 1 GB."""
    import numba
    import numpy as np

    @numba.njit(fastmath=True)
    def row_sums(a, out, start, stop):
        for r in range(start, stop):
            s = np.float32(0.0)
            for i in range(a.shape[1]):
                s += a[r, i]
            out[r] = s

    @numba.njit(parallel=True)
    def read_all(a, out):
        for c in numba.prange(a.shape[0] // 256):  # 1 MB per task
            row_sums(a, out, c * 256, (c + 1) * 256)

    a = np.ones((256 * 1024, 1024), dtype=np.float32)  # 1 GB
    out = np.empty(a.shape[0], dtype=np.float32)
    best = 0.0
    for fn in (lambda: read_all(a, out), lambda: a.sum()):
        fn()
        for _ in range(5):
            t = time.perf_counter()
            fn()
            best = max(best, a.nbytes / (time.perf_counter() - t))
    print(json.dumps(best))


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def _child(args, *extra):
    cmd = [sys.executable, __file__, "--threads", str(args.threads), *extra]
    env = thread_env(args.threads)
    if "OMP_WAIT_POLICY" not in os.environ:  # a process of its own: each library's default policy
        env.pop("OMP_WAIT_POLICY")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(extra[:2])} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    args = _args()
    if args.worker == "bandwidth":
        return measure_bandwidth()
    if args.worker:
        return worker(args)
    print(machine_line())
    libs = args.libraries
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        t = time.perf_counter()
        if args.dir:  # --dir: keep the checkpoints there (made once) for later runs
            tmp = args.dir
            if not (Path(tmp) / "ct2-int8").is_dir():
                Path(tmp).mkdir(parents=True, exist_ok=True)
                prepare(Path(tmp), args.layers)
        else:
            prepare(Path(tmp), args.layers)
        print(
            f"checkpoints written and converted in {time.perf_counter() - t:.0f} s; {args.threads} threads; "
            f"{args.rounds} rounds of {args.new} new tokens after {args.prompt} prompt tokens"
        )
        passes = [
            "--dir", tmp, "--prompt", str(args.prompt), "--new", str(args.new),
            "--batches", *map(str, args.batches),
        ]  # fmt: skip
        runs = {lib: [] for lib in libs}
        with contended(args.contended) as busy:
            print(machine_line(busy))
            bandwidth = _child(args, "--worker", "bandwidth")
            for _, order in interleave(args.rounds, libs):
                for lib in order:
                    runs[lib].append(_child(args, "--worker", lib, *passes))
            bandwidth = max(bandwidth, _child(args, "--worker", "bandwidth"))
            end_line = machine_line(busy)
    from minibloom.config import BloomConfig, param_shapes

    shapes = param_shapes(BloomConfig(n_layer=args.layers, **SHAPE)).values()
    params = sum(math.prod(shape) for shape in shapes)  # 559,214,592 for bloom-560m
    print(f"read bandwidth ({args.threads} threads): {bandwidth / 1e9:.1f} GB/s")
    print(
        f"\n{'B':>2} {'library':<9} {'prefill s':>9} {'decode tok/s':>12} {'vs HF':>6} {'vs CT2':>6} "
        f"{'bound tok/s':>11} {'of bound':>8}"
    )
    summary = []
    for B in args.batches:
        key = str(B)
        first = {lib: median([r[key][0] for r in runs[lib]]) for lib in libs}
        rate = {
            lib: median([B * (args.new - 1) / (r[key][1] - r[key][0]) for r in runs[lib]])
            for lib in libs
        }
        hf = max((rate[x] for x in ("hf-f32", "hf-bf16") if x in rate), default=None)
        for lib in libs:
            kind = lib.split("-")[1]
            ct2 = rate.get("ct2-f32" if kind == "f32" else "ct2-int8")
            bound = B * bandwidth / (params * WEIGHT_BITS[kind] / 8)
            vs_hf = f"{rate[lib] / hf:6.2f}" if hf else f"{'-':>6}"
            vs_ct2 = f"{rate[lib] / ct2:6.2f}" if ct2 else f"{'-':>6}"
            print(
                f"{B:>2} {lib:<9} {first[lib]:>9.3f} {rate[lib]:>12.2f} {vs_hf} {vs_ct2} "
                f"{bound:>11.1f} {rate[lib] / bound:>8.2f}"
            )
            summary.append(
                f"B={B} {lib}: {rate[lib]:.2f} tok/s, vs HF best {vs_hf.strip()}, vs CT2 "
                f"{vs_ct2.strip()}, {rate[lib] / bound:.2f} of its bandwidth bound"
            )
    print("\nsummary")
    for line in summary:
        print("  " + line)
    print(end_line)
    print(machine_line())


if __name__ == "__main__":
    main()
