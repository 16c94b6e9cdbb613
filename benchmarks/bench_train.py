"""Training-step throughput and peak memory: minibloom vs transformers + torch.optim.AdamW (CPU).

    python benchmarks/bench_train.py                  # small model, then the bloom-560m shape
    python benchmarks/bench_train.py --shapes small   # only the small one
    python benchmarks/bench_train.py --contended      # with one competing busy process

Shapes (issue 15): small = L4, C256, H4, V8192 at 8 x 256 tokens; 560m = bigscience/bloom-560m
(L24, C1024, H16, V250880) at 1 x 128 tokens. Random weights (seed 0), random ids, no padding.

A step is forward + backward + AdamW update on one (B, T) batch: minibloom's
`BloomCausalLM.loss_and_grads` + `AdamW.apply`, and torch's `BloomForCausalLM` forward, weighted
cross-entropy, `loss.backward()` and `torch.optim.AdamW.step()`. Each (library, shape) runs in its
own subprocess so that ru_maxrss is that run's peak; both run under benchmarks/common.py's
`thread_env` (the same thread count for torch, OpenBLAS, OpenMP and numba; passive OpenMP waiting). One warm-up step (numba compiles, torch
allocates) is not timed. Printed: tokens/s of each, the ratio minibloom / torch (> 1 = minibloom
faster), peak resident memory of each and its ratio (< 1 = minibloom smaller).

On a shared machine one run of each can be off by 2-3x either way (two BLAS threads that must meet
at every matmul wait for each other whenever another process takes a core). So the two libraries
alternate for `--rounds` rounds (minibloom first in odd rounds, torch first in even ones), and the
table gives the median tokens/s of each, the median of the per-round ratios and the min-max range
of those ratios; the machine line (CPU, load average, busy process or not) is printed before and
after.

The bloom-560m shape needs about 10 GB per run (params, grads and two AdamW moments in float32);
it is skipped with a message when /proc/meminfo reports less than 13 GB available.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import add_common_args, contended, interleave, machine_line, median, thread_env  # noqa: E402

SHAPES = {
    # name: (vocab V, layers L, heads H, hidden C, batch B, sequence T, timed steps)
    "small": (8192, 4, 4, 256, 8, 256, 5),  # issue 15's small shape (L4/C256/V8192, 8x256)
    "560m": (250880, 24, 16, 1024, 1, 128, 2),  # bigscience/bloom-560m, one 128-token row
}
DEFAULT_ROUNDS = {"small": 3, "560m": 1}  # a 560m round takes minutes and 10 GB per library


def _batch(V, B, T, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V, size=(B, T + 1), dtype=np.int64)
    return ids[:, :-1], ids[:, 1:]


def _worker_minibloom(V, L, H, C, B, T, steps):
    import numpy as np

    from minibloom.causal_lm import BloomCausalLM
    from minibloom.model import BloomBackbone
    from minibloom.optim import AdamW

    lm = BloomCausalLM(
        BloomBackbone(vocabulary_size=V, num_layers=L, num_heads=H, hidden_dim=C, seed=0)
    )
    opt = AdamW(1e-4, weight_decay=0.1)
    ids, y = _batch(V, B, T)
    x = {"token_ids": ids, "padding_mask": np.ones((B, T), dtype=bool)}
    w = np.ones((B, T), dtype=np.float32)

    def step():
        loss, grads = lm.loss_and_grads(x, y, w)
        opt.apply(lm.params, grads)
        return loss

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def _worker_torch(V, L, H, C, B, T, steps):
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    model = BloomForCausalLM(
        BloomConfig(vocab_size=V, n_layer=L, n_head=H, hidden_size=C, attn_implementation="eager")
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    ids, y = (torch.tensor(a) for a in _batch(V, B, T))
    mask = torch.ones_like(ids)
    w = torch.ones(B, T)

    def step():
        logits = model(input_ids=ids, attention_mask=mask).logits
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), y.reshape(-1), reduction="none"
        )
        loss = (w.reshape(-1) * ce).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def _worker(lib, shape):
    import resource

    V, L, H, C, B, T, steps = SHAPES[shape]
    seconds = (_worker_minibloom if lib == "minibloom" else _worker_torch)(V, L, H, C, B, T, steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"tokens_per_s": B * T * steps / seconds, "peak_mb": peak_mb}))


def _available_gb():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def _run_shape(shape, rounds, env):
    """Alternating rounds of both libraries on one shape -> the table row (a string)."""
    V, L, H, C, B, T, steps = SHAPES[shape]
    runs = {"minibloom": [], "torch": []}  # one result dict per round
    for _, order in interleave(rounds, ("minibloom", "torch")):
        for lib in order:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", lib, shape],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                return f"{shape}: {lib} worker failed:\n{out.stderr[-2000:]}"
            runs[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
    m_tps = [x["tokens_per_s"] for x in runs["minibloom"]]
    t_tps = [x["tokens_per_s"] for x in runs["torch"]]
    ratios = [a / b for a, b in zip(m_tps, t_tps)]  # same round: same machine load
    m_mb = max(x["peak_mb"] for x in runs["minibloom"])
    t_mb = max(x["peak_mb"] for x in runs["torch"])
    return (
        f"{shape:<8} {f'{B}x{T}':>8} {median(m_tps):>16,.1f} {median(t_tps):>12,.1f} "
        f"{median(ratios):>11.2f}x {f'{min(ratios):.2f}-{max(ratios):.2f}x':>13} "
        f"{m_mb:>13,.0f} {t_mb:>9,.0f} {m_mb / t_mb:>9.2f}x"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    add_common_args(ap)
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"alternating rounds per shape (default {DEFAULT_ROUNDS})",
    )
    ap.add_argument("--worker", nargs=2, metavar=("LIB", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    env = thread_env(args.threads)
    with contended(args.contended) as busy:
        print(machine_line(busy))
        print(f"training step (forward + backward + AdamW), {args.threads} threads, CPU")
        print(
            f"{'shape':<8} {'B x T':>8} {'minibloom tok/s':>16} {'torch tok/s':>12} "
            f"{'speed ratio':>12} {'(range)':>13} {'minibloom MB':>13} {'torch MB':>9} "
            f"{'mem ratio':>10}"
        )
        for shape in args.shapes:
            if shape == "560m" and _available_gb() < 13:
                print(
                    f"{shape:<8} skipped: {_available_gb():.1f} GB available, ~10 GB per run needed"
                )
                continue
            row = _run_shape(shape, args.rounds or DEFAULT_ROUNDS[shape], env)
            print(row, flush=True)
            if "worker failed" in row:
                return 1
        print(machine_line(busy))
        print("tok/s and ratio are medians over the rounds (ratio of each round, range min-max)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
