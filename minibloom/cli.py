"""`python -m minibloom`: the command-line interface.

One argparse subcommand per job. Every option and its default is declared here, in one place,
and `--help` on any subcommand shows them. Handlers are thin: they parse, call the library, and
print. A `MinibloomError` (a user mistake or a bad file) is printed as a single line
`minibloom: error: ...` and the process exits with status 2; nothing else is caught, so a real bug
still shows its traceback.
"""

import argparse
import os
import sys

from minibloom.errors import MinibloomError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default in --help and keep the description's line breaks."""


def _read_text_arg(value: str) -> str:
    """A text argument; `-` means read it from standard input."""
    return sys.stdin.read() if value == "-" else value


# ------------------------------------------------------------------------------------------------
# subcommands: each has an _add_<name>(subparsers) that declares it and a _run_<name>(args)
# ------------------------------------------------------------------------------------------------


def _add_presets(sub):
    p = sub.add_parser(
        "presets",
        help="list the model presets and which are on disk",
        description="List the shipped default model (first, when present) and the BLOOM presets, with the\n"
        "directory each resolves to, or 'not on disk'.",
        formatter_class=_Formatter,
    )
    p.set_defaults(run=_run_presets)


def _run_presets(args):
    from minibloom.presets import hf_hub_cache, list_presets, minibloom_home

    for name, description, path in list_presets():
        print(f"{name:<20} {str(path) if path else 'not on disk'}")
        print(f"{'':<20} {description}")
    print(f"searched: {minibloom_home()} (MINIBLOOM_HOME) and {hf_hub_cache()} (HF hub cache)")


def _add_parity(sub):
    p = sub.add_parser(
        "parity",
        help="compare minibloom with transformers layer by layer on a checkpoint",
        description="Run minibloom and transformers (float32) on the same prompt, as is and left-padded, and print\n"
        "the largest absolute and relative difference of every layer. Exits 1 above --tolerance.\n"
        "Needs torch and transformers (pip install -e '.[ref]').",
        formatter_class=_Formatter,
    )
    p.add_argument("model", metavar="PRESET_OR_DIR", help="model directory, preset name or hf://org/name")
    p.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog.", help="text to run (needs tokenizer.json)")
    p.add_argument("--ids", default=None, help="token ids to run instead of --prompt, e.g. '1,2,3'")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed max|diff| / max|reference| per layer")
    p.set_defaults(run=_run_parity)


def _run_parity(args):
    from minibloom.parity import run_parity

    return run_parity(args.model, args.prompt, ids=args.ids, tolerance=args.tolerance)


def _add_dump(sub):
    p = sub.add_parser(
        "dump",
        help="write every intermediate activation of a forward pass to an .npz",
        description="Run minibloom on a prompt and save every intermediate activation (embeddings, each block's\n"
        "LayerNorms, Q/K/V, attention probabilities, MLP, outputs, logits) to FILE.npz, for checking a port.",
        formatter_class=_Formatter,
    )
    p.add_argument("model", metavar="PRESET_OR_DIR", help="model directory, preset name or hf://org/name")
    p.add_argument("--prompt", required=True, help="text to run (needs tokenizer.json); use --ids for raw ids")
    p.add_argument("--ids", default=None, help="token ids to run instead of encoding --prompt, e.g. '1,2,3'")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    p.set_defaults(run=_run_dump)


def _run_dump(args):
    from minibloom.parity import run_dump

    path = run_dump(args.model, args.prompt, args.out, ids=args.ids)
    print(f"wrote {path}")


def _add_tokenize(sub):
    p = sub.add_parser(
        "tokenize",
        help="encode text with BLOOM's tokenizer and print the tokens",
        description="Encode TEXT (or standard input) and print one token a line: id, token string (byte-level\n"
        "spelling, 'Ġ' = space) and the text it stands for. --ids prints only the ids, --pieces only the\n"
        "token strings. Without --tokenizer, the default model's tokenizer.json (under weights/) is used.",
        formatter_class=_Formatter,
    )
    p.add_argument("text", nargs="?", default="-", help="text to encode; '-' reads standard input")
    p.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer.json, or a directory / preset holding one; none: the default model's")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--ids", action="store_true", help="print only the ids, space-separated on one line")
    shown.add_argument("--pieces", action="store_true", help="print only the token strings, space-separated on one line")
    p.set_defaults(run=_run_tokenize)


def _run_tokenize(args):
    from pathlib import Path

    from minibloom.tokenizer import BloomTokenizer, default_tokenizer_path

    path = Path(args.tokenizer) if args.tokenizer else default_tokenizer_path()
    tok = BloomTokenizer.from_file(path) if path.is_file() else BloomTokenizer.from_preset(args.tokenizer)
    ids = tok.encode(_read_text_arg(args.text))
    if args.ids:
        print(" ".join(map(str, ids)))
    elif args.pieces:
        print(" ".join(tok.id_to_token(i) for i in ids))
    else:
        for i in ids:
            print(f"{i}\t{tok.id_to_token(i)}\t{tok.decode([i])!r}")


def _add_train_tokenizer(sub):
    p = sub.add_parser(
        "train-tokenizer",
        help="train a BLOOM-pipeline BPE tokenizer and write tokenizer.json",
        description="Learn byte-level BPE merges on text files with BLOOM's pre-tokenizer and write an HF\n"
        "tokenizer.json (<unk> <s> </s> <pad> are ids 0-3). A .jsonl file contributes the 'text' field of\n"
        "each line; any other file is read whole as UTF-8 text.",
        formatter_class=_Formatter,
    )
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="training text files (.txt, or .jsonl with a 'text' field)")
    p.add_argument("--vocab-size", type=int, default=8000, help="total ids, including the 4 specials and 256 byte tokens")
    p.add_argument("--min-frequency", type=int, default=2, help="stop when the most frequent pair occurs fewer times")
    p.add_argument("--out", required=True, metavar="PATH", help="tokenizer.json to write (a directory gets tokenizer.json inside)")
    p.add_argument("--keras", action="store_true", help="also write keras-hub vocabulary.json + merges.txt next to it")
    p.set_defaults(run=_run_train_tokenizer)


def _run_train_tokenizer(args):
    import time

    from minibloom.bpe_train import read_training_texts, train_tokenizer

    start = time.perf_counter()
    tok = train_tokenizer(read_training_texts(args.data), args.vocab_size, min_frequency=args.min_frequency)
    path = tok.save(args.out)
    print(f"wrote {path}: {tok.vocabulary_size()} tokens in {time.perf_counter() - start:.1f} s")
    if args.keras:
        for written in tok.save_keras_assets(path.parent):
            print(f"wrote {written}")


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train or fine-tune a BLOOM on text files (checkpoints, resume, held-out loss)",
        description="Train on text files (documents separated by blank lines, each ended with </s>), packed into\n"
        "windows of --seq-len tokens. The model is a --preset / model directory (fine-tuning), a --config\n"
        "config.json, or the size flags (random init). Writes OUT/checkpoints (full training state, resumable\n"
        "with --resume), OUT/loss_curve.csv (+ .png with matplotlib) and the final model as OUT/model\n"
        "(config.json + model.safetensors + tokenizer.json, loadable by transformers). Ctrl-C saves and exits.",
        formatter_class=_Formatter,
    )
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", metavar="NAME_OR_DIR", help="start from this model's weights (fine-tune)")
    model.add_argument("--config", metavar="FILE", help="config.json of a model to train from a random init")
    p.add_argument("--layers", type=int, default=4, help="blocks L (size flags, when neither --preset nor --config)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size C (size flags)")
    p.add_argument("--heads", type=int, default=4, help="attention heads H (size flags)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json (default: the preset's, else the default model's)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training window T")
    p.add_argument("--batch-size", type=int, default=8, help="windows per micro-batch")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step (gradient accumulation)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default: --epochs 1)")
    length.add_argument("--epochs", type=int, help="passes over the training windows")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine", help="after the warmup")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decoupled weight decay (not on biases/LayerNorms)")
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping")
    p.add_argument("--heldout", type=float, default=0.05, help="fraction of windows held out for evaluation")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate on the held-out windows every N steps (0: never)")
    p.add_argument("--eval-batches", type=int, default=20, help="held-out batches per evaluation")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (also at the end and on Ctrl-C)")
    p.add_argument("--seed", type=int, default=0, help="seeds the init, the batch order and dropout")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/LATEST if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(run=_run_train)


def _run_train(args):
    from pathlib import Path

    from minibloom.causal_lm import BloomCausalLM
    from minibloom.config import BloomConfig
    from minibloom.model import BloomBackbone
    from minibloom.preprocessor import BloomCausalLMPreprocessor
    from minibloom.tokenizer import BloomTokenizer, default_tokenizer_path
    from minibloom.train import latest_checkpoint, train_on_files

    ckpt = latest_checkpoint(Path(args.out) / "checkpoints") if args.resume else None
    if args.preset and ckpt is None:
        lm = BloomCausalLM.from_preset(args.preset)
        tokenizer = lm.tokenizer
    else:
        tokenizer = None
    if args.tokenizer or tokenizer is None:
        tokenizer = BloomTokenizer.from_file(args.tokenizer or default_tokenizer_path())
    if ckpt is not None:  # the checkpoint's own config; its weights are loaded by the trainer
        config = BloomConfig.from_json_file(ckpt / "config.json")
    elif args.config:
        config = BloomConfig.from_json_file(args.config)
    elif not args.preset:
        config = BloomConfig.from_keras_kwargs(tokenizer.vocabulary_size(), args.layers, args.heads, args.hidden)
    if ckpt is not None or not args.preset:
        lm = BloomCausalLM(BloomBackbone.from_config(config, seed=args.seed))
    lm.preprocessor = BloomCausalLMPreprocessor(tokenizer, sequence_length=args.seq_len)
    train_on_files(
        lm, args.data, args.out, sequence_length=args.seq_len, batch_size=args.batch_size, steps=args.steps,
        epochs=None if args.steps else (args.epochs or 1), learning_rate=args.lr, schedule=args.schedule,
        warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, accumulate_steps=args.accumulate,
        heldout=args.heldout, eval_every=args.eval_every, eval_batches=args.eval_batches,
        save_every=args.save_every, seed=args.seed, resume=args.resume, progress=not args.no_progress,
    )


def _add_generate(sub):
    p = sub.add_parser(
        "generate",
        help="continue a prompt with a BLOOM model, streaming the text as it is generated",
        description="Continue PROMPT ('-' reads standard input) and stream the text to stdout as it is generated.\n"
        "--max-length counts prompt + new tokens. Without --preset the model shipped in weights/ is used.\n"
        "--temperature 0 means greedy whatever the sampler; --seed makes the random samplers reproducible.\n"
        "Generation stops at </s>, at any --stop text (each must be a single token) or at --max-length.",
        formatter_class=_Formatter,
    )
    p.add_argument("prompt", metavar="PROMPT", help="text to continue; '-' reads standard input (one final newline dropped)")
    p.add_argument("--preset", default=None, metavar="NAME_OR_DIR", help="model directory, preset name or hf://org/name (none: the shipped model)")
    p.add_argument("--max-length", type=int, default=128, help="prompt + completion tokens")
    p.add_argument("--sampler", choices=["greedy", "top_k", "top_p", "random", "beam", "contrastive"], default="greedy", help="how the next token is chosen")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits before the softmax; 0 means greedy")
    p.add_argument("--top-k", type=int, default=None, help="k of top_k and contrastive (default 5); for top_p an optional pre-cut")
    p.add_argument("--top-p", type=float, default=0.1, help="nucleus mass p of top_p, in (0, 1] (keras-hub's default 0.1)")
    p.add_argument("--alpha", type=float, default=0.6, help="degeneration penalty of contrastive search, in [0, 1]")
    p.add_argument("--num-beams", type=int, default=5, help="beams of beam search")
    p.add_argument("--seed", type=int, default=None, help="seed of top_k / top_p / random (none: a fresh seed each run)")
    p.add_argument("--stop", nargs="+", default=[], metavar="TEXT", help="extra stop texts (each one token), besides </s>")
    p.add_argument("--stats", action="store_true", help="print prompt tokens, new tokens, prefill time and tokens/s to stderr")
    p.set_defaults(run=_run_generate)


def _run_generate(args):
    from minibloom import samplers
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.errors import ArgumentError, PresetNotFoundError
    from minibloom.generate import stream_text

    k = 5 if args.top_k is None else args.top_k
    make = {
        "greedy": lambda: samplers.GreedySampler(temperature=args.temperature),
        "top_k": lambda: samplers.TopKSampler(k=k, seed=args.seed, temperature=args.temperature),
        "top_p": lambda: samplers.TopPSampler(p=args.top_p, k=args.top_k, seed=args.seed, temperature=args.temperature),
        "random": lambda: samplers.RandomSampler(seed=args.seed, temperature=args.temperature),
        "beam": lambda: samplers.BeamSampler(num_beams=args.num_beams, temperature=args.temperature),
        "contrastive": lambda: samplers.ContrastiveSampler(k=k, alpha=args.alpha, temperature=args.temperature),
    }
    sampler = make[args.sampler]()  # checks k, p, temperature, ... before the model loads
    if args.max_length < 1:
        raise ArgumentError(f"--max-length must be >= 1, found {args.max_length}")
    try:
        lm = BloomCausalLM.from_preset(args.preset)
    except PresetNotFoundError:
        if args.preset is not None:
            raise
        raise PresetNotFoundError("no default model is shipped in weights/ yet; pass --preset NAME_OR_DIR") from None
    if lm.preprocessor is None:
        raise ArgumentError(f"--preset {args.preset}: the model has no tokenizer.json, so it cannot read text")
    tok = lm.preprocessor.tokenizer
    stops = [tok.end_token_id]
    for text in args.stop:
        ids = tok.encode(text)
        if len(ids) != 1:
            raise ArgumentError(f"--stop {text!r}: a stop text must be exactly one token, it encodes to {len(ids)} tokens {ids}")
        stops.append(ids[0])
    prompt = _read_text_arg(args.prompt)
    if args.prompt == "-":
        prompt = prompt.removesuffix("\n")  # the newline that ends piped or typed input
    stats = {}
    for piece in stream_text(lm, prompt, args.max_length, tuple(stops), False, sampler, stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.stats:
        line = f"prompt tokens {stats['prompt_tokens']}, new tokens {stats['new_tokens']}, prefill {stats['prefill_seconds']:.3f} s"
        if stats["total_seconds"] > 0:
            line += f", {stats['new_tokens'] / stats['total_seconds']:.2f} tokens/s overall"
        if stats["decode_seconds"] > 0 and stats["new_tokens"] > 1:
            line += f", {(stats['new_tokens'] - 1) / stats['decode_seconds']:.2f} tokens/s after the first"
        print(line, file=sys.stderr)


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="score a held-out text file: loss, perplexity and bits per byte",
        description="Tokenize a text file as `train` does (blank lines separate documents, each ended by </s>),\n"
        "score it in consecutive windows of --seq-len tokens, and print the loss per token, the perplexity\n"
        "and bits per byte (total negative log-likelihood in bits / UTF-8 bytes of the file).",
        formatter_class=_Formatter,
    )
    p.add_argument("data", metavar="FILE", help="UTF-8 text file")
    p.add_argument("--preset", default=None, metavar="NAME_OR_DIR", help="model directory or preset name (none: the shipped model)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens of context per window T")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weights in memory (compute is float32)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.errors import ArgumentError
    from minibloom.evaluation import evaluate_file

    if not os.path.isfile(args.data):
        raise ArgumentError(f"FILE {args.data}: not a file")
    lm = BloomCausalLM.from_preset(args.preset, dtype=args.dtype)
    m = evaluate_file(lm, args.data, sequence_length=args.seq_len, batch_size=args.batch_size)
    print(f"{args.data}: {m['tokens']:,} tokens scored, {m['bytes']:,} bytes")
    print(f"loss {m['loss']:.4f} nats/token, perplexity {m['perplexity']:.2f}, {m['bits_per_byte']:.4f} bits per byte")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minibloom",
        description="BLOOM in NumPy: tokenize, generate, train, and check parity with transformers.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The order here is the order `--help` lists the commands in.
    # (each _add_* declares one subcommand and sets its handler with set_defaults(run=...))
    _add_generate(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_tokenize(sub)
    _add_train_tokenizer(sub)
    _add_presets(sub)
    _add_parity(sub)
    _add_dump(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MinibloomError as e:
        print(f"minibloom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minibloom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m minibloom generate ... | head`
        return 0
