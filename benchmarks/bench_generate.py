"""Greedy decoding speed on the bloom-560m shape: minibloom vs transformers, and the bandwidth bound.

    python benchmarks/bench_generate.py [--batches 1 8] [--new 64] [--prompt 128] [--threads 2]

Model: 24 layers, hidden 1024, 16 heads, vocabulary 250880, random float32 weights drawn once by
minibloom (`init_params`) and handed to a transformers BloomForCausalLM without a copy
(torch.from_numpy), so both libraries read the very same 2.24 GB. Prompt: 128 random ids, no
padding; then 64 new tokens, greedy, no stop token. Both run in this process with the same
thread count (torch.set_num_threads, OPENBLAS/OMP/NUMBA_NUM_THREADS set before numpy loads).

Reported per batch size B, for transformers (float32), minibloom (float32) and minibloom with the
same weights rounded to float16 and kept so in memory (decode reads them with the matvec16 kernel):
    prefill   seconds for the prompt forward + first token
    decode    tokens/s over the remaining 63 steps, counting all B rows (B * 63 / seconds)
    ratio     decode tokens/s / transformers' (above 1: faster than transformers)
    bounds    memory-bandwidth bounds of decoding: each step reads every weight once, so
              tokens/s <= B * bandwidth / bytes of weights; "of f32" uses the 2.24 GB of float32
              weights, "of 16-bit" the 1.12 GB of 16-bit ones (measured / bound)

Bandwidth is measured here too: the best of a 1-thread NumPy sum and a threaded, vectorised numba
sum over a 1 GB array (reading is all a decode step does with its weights). The last section times the 16-bit matrix-vector kernel (kernels/matvec16.py) over
every matrix of the model (BF16 and F16 bit patterns of the same weights, one token) against the
16-bit bound (1.12 GB per token): how close a decode that kept the checkpoint's 16-bit weights
could get. Each timing is the best of --repeat runs after a warm-up.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _args():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="new tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per case (after one warm-up)")
    ap.add_argument("--layers", type=int, default=24, help="(smaller for a quick check)")
    return ap.parse_args()


def measure_bandwidth(np, njit_parallel):
    """Read bandwidth in bytes/s: the best of NumPy's sum (1 thread) and a numba prange sum."""
    a = np.ones(256 * 1024 * 1024, dtype=np.float32)  # 1 GB
    best = 0.0
    for fn in (lambda: a.sum(), lambda: njit_parallel(a)):
        fn()
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = max(best, a.nbytes / (time.perf_counter() - t))
    return best


def main():
    args = _args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Both libraries share this process and its cores. By default GNU OpenMP's idle threads (torch's
    # and numba's) spin for a while after every parallel region, stealing a core from whichever
    # library runs next: measured here, minibloom's decode step took 390 ms right after torch ran
    # and 116 ms in a process of its own. Passive waiting lets them alternate fairly.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba
    import numpy as np
    import torch
    import transformers

    from minibloom.config import BloomConfig
    from minibloom.generate import decode_steps
    from minibloom.kernels.matvec16 import matvec16
    from minibloom.model import BloomBackbone, init_params
    from minibloom.samplers import GreedySampler

    torch.set_num_threads(args.threads)

    @numba.njit(parallel=True, fastmath=True)
    def psum(a):
        """Sum of a 1-D float32 array, 1 MB chunks split over the threads (vectorised: fastmath)."""
        chunk = 1 << 18
        n = a.shape[0] // chunk
        partial = np.zeros(n, dtype=np.float32)
        for c in numba.prange(n):
            s = np.float32(0.0)
            for i in range(c * chunk, (c + 1) * chunk):
                s += a[i]
            partial[c] = s
        return partial.sum()

    config = BloomConfig(vocab_size=250880, hidden_size=1024, n_layer=args.layers, n_head=16)
    t = time.perf_counter()
    params = init_params(config, seed=0)
    bb = BloomBackbone.from_config(config, params)
    hf_config = transformers.BloomConfig(
        vocab_size=250880, hidden_size=1024, n_layer=args.layers, n_head=16
    )
    with torch.device("meta"):
        model = transformers.BloomForCausalLM(hf_config)
    state = {f"transformer.{k}": torch.from_numpy(v) for k, v in params.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.lm_head.weight = model.transformer.word_embeddings.weight  # tied, as in the checkpoints
    model.eval()
    assert model.lm_head.weight.data_ptr() == params["word_embeddings.weight"].ctypes.data
    weight_bytes = sum(v.nbytes for v in params.values())
    print(
        f"model: {args.layers} layers, {weight_bytes / 1e9:.2f} GB float32 shared by both libraries "
        f"(built in {time.perf_counter() - t:.1f} s); {args.threads} threads; numpy {np.__version__}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"load average before: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs; other processes make every number lower and noisier)"
    )
    bandwidth = measure_bandwidth(np, psum)
    print(
        f"read bandwidth: {bandwidth / 1e9:.1f} GB/s -> float32 bound {bandwidth / weight_bytes:.2f} tokens/s per row\n"
    )

    # the same weights rounded to float16 and kept so in memory: decode reads them with the
    # matvec16 kernel (ops.times_weight_t), half the bytes per token
    bb16 = BloomBackbone.from_config(config, {k: v.astype(np.float16) for k, v in params.items()})
    bytes16 = sum(v.nbytes for v in bb16.params.values())

    def decode_with(backbone):
        def run(ids):
            mask = np.ones(ids.shape, dtype=bool)
            t0 = time.perf_counter()
            first = None
            for t, _, _ in decode_steps(
                backbone, ids, mask, ids.shape[1] + args.new, GreedySampler(), (), 3
            ):
                if first is None:
                    first = time.perf_counter() - t0
            return first, time.perf_counter() - t0

        return run

    def theirs(ids):
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
            out = model.generate(x, max_new_tokens=args.new, **kw)
            total = time.perf_counter() - t0
        assert out.shape[1] == ids.shape[1] + args.new
        return first, total

    def best(fn, ids):
        fn(ids[:, :8])  # warm-up (numba kernels, allocations)
        runs = [fn(ids) for _ in range(args.repeat)]
        return min(r[0] for r in runs), min(r[1] for r in runs)

    print(
        "bound columns: tokens/s if every weight byte is read once per step at the bandwidth above;"
    )
    print(
        f"'of f32' / 'of 16-bit' = measured / bound for {weight_bytes / 1e9:.2f} GB (float32) or {bytes16 / 1e9:.2f} GB (16-bit) of weights"
    )
    print(
        f"{'B':>2} {'library':<22} {'prefill s':>9} {'decode tok/s':>12} {'ratio':>6} {'of f32':>6} {'of 16-bit':>9}"
    )
    summary = []
    for B in args.batches:
        ids = np.random.default_rng(B).integers(4, 250680, size=(B, args.prompt))
        bound32, bound16 = B * bandwidth / weight_bytes, B * bandwidth / bytes16
        rates = {}
        cases = (
            ("transformers f32", theirs),
            ("minibloom f32", decode_with(bb)),
            ("minibloom f16 weights", decode_with(bb16)),
        )
        for name, fn in cases:
            first, total = best(fn, ids)
            rates[name] = B * (args.new - 1) / (total - first)
            ratio = rates[name] / rates["transformers f32"]
            print(
                f"{B:>2} {name:<22} {first:>9.3f} {rates[name]:>12.2f} {ratio:>6.2f} {rates[name] / bound32:>6.2f} {rates[name] / bound16:>9.2f}"
            )
            summary.append(
                f"B={B} {name}: {rates[name]:.2f} tok/s, {ratio:.2f}x transformers, "
                f"{rates[name] / bound32:.2f} of the f32 bound ({bound32:.1f}), {rates[name] / bound16:.2f} of the 16-bit bound ({bound16:.1f})"
            )
    print(
        f"load average after the decode runs: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)"
    )
    # --- 16-bit weights: every matrix of the model, one token ------------------------------------
    mats = [v for k, v in params.items() if v.ndim == 2]
    for kind in ("BF16", "F16"):
        if kind == "BF16":
            w16 = [
                (m.view(np.uint32) >> 16).astype(np.uint16) for m in mats
            ]  # truncated bf16 patterns
        else:
            w16 = [m.astype(np.float16).view(np.uint16) for m in mats]
        x = {
            m.shape[1]: np.random.default_rng(0).standard_normal((1, m.shape[1])).astype(np.float32)
            for m in mats
        }
        nbytes = sum(w.nbytes for w in w16)
        for w in w16[:2]:
            matvec16(x[w.shape[1]], w, kind)  # compile / warm up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for w in w16:
                matvec16(x[w.shape[1]], w, kind)
            times.append(time.perf_counter() - t0)
        rate, bound16 = 1.0 / min(times), bandwidth / nbytes
        print(
            f"\n16-bit matvec kernel ({kind}, {nbytes / 1e9:.2f} GB, all matrices, B=1): {rate:.2f} tokens/s = "
            f"{nbytes * rate / 1e9:.1f} GB/s; 16-bit bound {bound16:.2f} tokens/s -> {rate / bound16:.2f} of bound"
        )
        del w16
    print("\nsummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
