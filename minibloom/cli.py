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

from minibloom.arguments import (
    check_output_dir,
    cli_file,
    cli_float,
    cli_int,
    cli_output_dir,
    cli_path,
    expand_path,
)
from minibloom.errors import ArgumentError, MinibloomError
from minibloom.samplers import NAMES as SAMPLER_NAMES


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default in --help and keep the description's line breaks."""


class _UsageError(Exception):
    """argparse refused the command line; main() prints its message as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one line `minibloom: error: argument --x: ...`
    and exit status 2 (argparse would print the usage first). `--help` still prints the usage."""

    def error(self, message):
        raise _UsageError(message)


class _StdoutError(MinibloomError):
    """Standard output is closed or cannot be written (a full disk, /dev/full)."""


def _emit(text: str = "", end: str = "\n") -> None:
    """Write a command's output to stdout; a closed or failing stdout becomes one error line."""
    if sys.stdout is None:
        raise _StdoutError("standard output is closed; nothing to write the output to")
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main() ends quietly
    except (OSError, ValueError) as e:  # ValueError: "I/O operation on closed file"
        raise _StdoutError(
            f"cannot write to standard output ({getattr(e, 'strerror', None) or e})"
        ) from None


def _log_lines():
    """A log function for long runs: like _emit, but a failing stdout never stops the run (one
    warning on stderr, then log lines are dropped)."""
    state = {"ok": True}

    def log(text=""):
        if not state["ok"]:
            return
        try:
            _emit(str(text))
        except (_StdoutError, BrokenPipeError) as e:
            state["ok"] = False
            _error_line(
                f"minibloom: warning: {e or 'standard output closed'}; the run continues without log lines"
            )

    return log


def _error_line(text: str) -> None:
    if sys.stderr is not None:
        try:
            print(text, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush of a broken stdout is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _read_text_arg(value: str, name: str = "TEXT") -> str:
    """A text argument; `-` means read it from standard input (UTF-8)."""
    if value != "-":
        return value
    if sys.stdin is None:
        raise ArgumentError(f"{name} '-': standard input is closed; pass the text as an argument")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArgumentError(
            f"{name} '-': standard input is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 4]!r})"
        ) from None


def _model_dir_arg(text: str) -> str:
    """argparse type of --preset / PRESET_OR_DIR: a preset name, hf://org/name or a directory; `~`
    expanded; an existing path that is not a directory is refused here (it cannot be a model)."""
    if text.startswith("hf://"):
        return text
    path = cli_path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{path} is a file; expected a model directory (holding config.json), "
            f"a preset name or hf://org/name"
        )
    return str(path) if text.startswith("~") else text


def _ids_arg(text: str) -> list:
    """argparse type of --ids: token ids >= 0 separated by commas or spaces."""
    parts = text.replace(",", " ").split()
    try:
        ids = [int(t) for t in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected token ids (integers >= 0) separated by commas or spaces, found {text[:60]!r}"
        ) from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(
            f"expected one or more token ids >= 0, found {text[:60]!r}"
        )
    return ids


def _npz_out_arg(text: str):
    """argparse type of dump --out: a .npz file name whose directory can hold it."""
    path = cli_path(text)
    if path.suffix != ".npz":
        raise argparse.ArgumentTypeError(f"expected a .npz file name, found {text[:100]!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory; expected a .npz file name")
    try:
        check_output_dir("value", path.parent)
    except ArgumentError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
    return path


def _tokenizer_out_arg(text: str):
    """argparse type of train-tokenizer --out: a file, or a directory that gets tokenizer.json."""
    path = cli_path(text)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        check_output_dir("value", path.parent)
    except ArgumentError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
    return path


POSITIVE = cli_int(lo=1)
NON_NEGATIVE = cli_int(lo=0)


# ------------------------------------------------------------------------------------------------
# subcommands: each has an _add_<name>(subparsers) that declares it and a _run_<name>(args)
# ------------------------------------------------------------------------------------------------


def _add_presets(sub):
    p = sub.add_parser(
        "presets",
        help="list the model presets and which are on disk",
        description="List the shipped default model (first, when present) and the BLOOM presets, with the\n"
        "directory each resolves to, or 'not on disk', then the keras-hub downloads in the kagglehub cache.",
        formatter_class=_Formatter,
    )
    p.set_defaults(run=_run_presets)


def _run_presets(args):
    from minibloom.io.presets import (
        hf_hub_cache,
        kaggle_downloads,
        kagglehub_cache,
        list_presets,
        minibloom_home,
    )

    for name, description, path in list_presets():
        _emit(f"{name:<20} {str(path) if path else 'not on disk'}")
        _emit(f"{'':<20} {description}")
    downloads = kaggle_downloads()
    _emit(f"keras-hub downloads ({len(downloads)}):" if downloads else "keras-hub downloads: none")
    for handle, path in downloads:
        _emit(f"  {handle:<48} {path}")
    _emit(
        f"searched: {minibloom_home()} (MINIBLOOM_HOME), {hf_hub_cache()} (HF hub cache) and "
        f"{kagglehub_cache()} (kagglehub cache, KAGGLEHUB_CACHE)"
    )


def _add_parity(sub):
    p = sub.add_parser(
        "parity",
        help="compare minibloom with transformers layer by layer on a checkpoint",
        description="Run minibloom and transformers (float32) on the same prompt, as is and left-padded, and print\n"
        "the largest absolute and relative difference of every layer. Exits 1 above --tolerance.\n"
        "Needs torch and transformers (pip install -e '.[ref]').",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model",
        metavar="PRESET_OR_DIR",
        type=_model_dir_arg,
        help="model directory, preset name or hf://org/name",
    )
    p.add_argument(
        "--prompt",
        default="The quick brown fox jumps over the lazy dog.",
        help="text to run (needs tokenizer.json)",
    )
    p.add_argument(
        "--ids",
        type=_ids_arg,
        default=None,
        help="token ids to run instead of --prompt, e.g. '1,2,3'",
    )
    p.add_argument(
        "--tolerance",
        type=cli_float(lo=0.0),
        default=1e-4,
        help="largest allowed max|diff| / max|reference| per layer",
    )
    p.add_argument(
        "--truth",
        action="store_true",
        help="also compare transformers and minibloom each with the float64 forward",
    )
    p.set_defaults(run=_run_parity)


def _run_parity(args):
    from minibloom.parity import run_parity

    return run_parity(
        args.model, args.prompt, ids=args.ids, tolerance=args.tolerance, truth=args.truth, out=_emit
    )


def _add_dump(sub):
    p = sub.add_parser(
        "dump",
        help="write every intermediate activation of a forward pass to an .npz",
        description="Run minibloom on a prompt and save every intermediate activation (embeddings, each block's\n"
        "LayerNorms, Q/K/V, attention probabilities, MLP, outputs, logits) to FILE.npz, for checking a port.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model",
        metavar="PRESET_OR_DIR",
        type=_model_dir_arg,
        help="model directory, preset name or hf://org/name",
    )
    p.add_argument(
        "--prompt", required=True, help="text to run (needs tokenizer.json); use --ids for raw ids"
    )
    p.add_argument(
        "--ids",
        type=_ids_arg,
        default=None,
        help="token ids to run instead of encoding --prompt, e.g. '1,2,3'",
    )
    p.add_argument(
        "--out", required=True, type=_npz_out_arg, metavar="FILE.npz", help="output file"
    )
    p.set_defaults(run=_run_dump)


def _run_dump(args):
    from minibloom.parity import run_dump

    path = run_dump(args.model, args.prompt, args.out, ids=args.ids)
    _emit(f"wrote {path}")


def _add_compare(sub):
    p = sub.add_parser(
        "compare",
        help="judge a port's activations: within rounding of the float64 truth, or a bug?",
        description="Read a port's activations (FILE: .npz or .safetensors with token_ids and any keys of `dump`,\n"
        "or HF hidden_states.{i}), recompute them in float64 (the truth) and at --precision, and print per\n"
        "key the port's difference, the envelope an honest implementation at that precision stays within,\n"
        "and the first divergence. Exit 0: all within; 1: a divergence; 2: bad input. See docs/PORTING.md.",
        formatter_class=_Formatter,
    )
    p.add_argument("file", metavar="FILE", type=cli_file, help="the port's .npz or .safetensors")
    p.add_argument(
        "--preset",
        required=True,
        type=_model_dir_arg,
        help="model directory, preset name or hf://org/name the port ran",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="the precision the port computes in (sets the envelope)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run_compare)


def _run_compare(args):
    from minibloom.compare import run_compare

    return run_compare(args.file, args.preset, args.precision, as_json=args.json, out=_emit)


def _load_tokenizer(value, flag="--tokenizer"):
    """A tokenizer from a tokenizer.json file, a directory holding one (or keras assets), or a preset."""
    from minibloom.tokenizer import BloomTokenizer

    path = expand_path(flag, value)
    if path.is_file():
        return BloomTokenizer.from_file(path)
    if path.exists() and not path.is_dir():
        raise ArgumentError(
            f"{flag} {path}: not a regular file; expected a tokenizer.json or a model directory"
        )
    return BloomTokenizer.from_preset(str(path) if path.exists() else str(value))


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
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="tokenizer.json, or a directory / preset holding one; none: the default model's",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--ids", action="store_true", help="print only the ids, space-separated on one line"
    )
    shown.add_argument(
        "--pieces",
        action="store_true",
        help="print only the token strings, space-separated on one line",
    )
    p.set_defaults(run=_run_tokenize)


def _run_tokenize(args):
    from minibloom.tokenizer import BloomTokenizer, default_tokenizer_path

    tok = (
        _load_tokenizer(args.tokenizer)
        if args.tokenizer
        else BloomTokenizer.from_file(default_tokenizer_path())
    )
    ids = tok.encode(_read_text_arg(args.text))
    if args.ids:
        _emit(" ".join(map(str, ids)))
    elif args.pieces:
        _emit(" ".join(tok.id_to_token(i) for i in ids))
    else:
        _emit("".join(f"{i}\t{tok.id_to_token(i)}\t{tok.decode([i])!r}\n" for i in ids), end="")


CORPUS_HELP = (
    "corpus files: UTF-8 text (blank lines separate documents) or JSON lines (.jsonl, one document "
    'per line\'s "text" field), either optionally compressed (.xz, .gz)'
)


def _add_train_tokenizer(sub):
    p = sub.add_parser(
        "train-tokenizer",
        help="train a BLOOM-pipeline BPE tokenizer and write tokenizer.json",
        description="Learn byte-level BPE merges on corpus files with BLOOM's pre-tokenizer and write an HF\n"
        "tokenizer.json (<unk> <s> </s> <pad> are ids 0-3). The files are read as `train` reads them:\n"
        'plain text split into documents at blank lines, or the "text" field of each JSON line (.jsonl),\n'
        "optionally .xz / .gz compressed; each document is pre-tokenized on its own.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--data", nargs="+", required=True, type=cli_file, metavar="FILE", help=CORPUS_HELP
    )
    p.add_argument(
        "--vocab-size",
        type=cli_int(lo=260),
        default=8000,
        help="total ids, including the 4 specials and 256 byte tokens",
    )
    p.add_argument(
        "--min-frequency",
        type=POSITIVE,
        default=2,
        help="stop when the most frequent pair occurs fewer times",
    )
    p.add_argument(
        "--out",
        required=True,
        type=_tokenizer_out_arg,
        metavar="PATH",
        help="tokenizer.json to write (a directory gets tokenizer.json inside)",
    )
    p.add_argument(
        "--keras",
        action="store_true",
        help="also write keras-hub vocabulary.json + merges.txt next to it",
    )
    p.set_defaults(run=_run_train_tokenizer)


def _run_train_tokenizer(args):
    import time

    from minibloom.training.bpe_train import read_training_texts, train_tokenizer

    start = time.perf_counter()
    tok = train_tokenizer(
        read_training_texts(args.data), args.vocab_size, min_frequency=args.min_frequency
    )
    path = tok.save(args.out)
    _emit(f"wrote {path}: {tok.vocabulary_size()} tokens in {time.perf_counter() - start:.1f} s")
    if args.keras:
        for written in tok.save_keras_assets(path.parent):
            _emit(f"wrote {written}")


SIZE_FLAGS = (("layers", "n_layer", 4), ("hidden", "hidden_size", 128), ("heads", "n_head", 4))


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train or fine-tune a BLOOM on text files (checkpoints, resume, held-out loss)",
        description='Train on corpus files (documents separated by blank lines, or JSON lines with a "text" field;\n'
        ".xz / .gz read as is; each document ended with </s>), packed into windows of --seq-len tokens.\n"
        "The model is a --preset / model directory (fine-tuning), a --config config.json, or the size\n"
        "flags (random init). Writes OUT/checkpoints (full training state, resumable with --resume;\n"
        "each step-N is also a model directory for generate --preset), OUT/loss_curve.csv (+ .png with\n"
        "matplotlib) and the final model as OUT/model (config.json + model.safetensors + tokenizer.json,\n"
        "loadable by transformers). Ctrl-C saves and exits.\n\n"
        "An OUT holding a previous run (checkpoints/, model/ or loss_curve.csv) is refused without\n"
        "--resume. --resume continues with the checkpoint's own config and tokenizer; a --preset,\n"
        "--config, size flag or --tokenizer that differs from them is refused.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--data", nargs="+", required=True, type=cli_file, metavar="FILE", help=CORPUS_HELP
    )
    p.add_argument(
        "--out", required=True, type=cli_output_dir, metavar="DIR", help="output directory"
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--preset",
        type=_model_dir_arg,
        metavar="NAME_OR_DIR",
        help="start from this model's weights (fine-tune)",
    )
    model.add_argument(
        "--config",
        type=cli_file,
        metavar="FILE",
        help="config.json of a model to train from a random init",
    )
    for flag, key, default in SIZE_FLAGS:
        what = {"layers": "blocks L", "hidden": "hidden size C", "heads": "attention heads H"}[flag]
        p.add_argument(
            f"--{flag}",
            type=POSITIVE,
            default=None,
            help=f"{what} (size flags, when neither --preset nor --config; default {default})",
        )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.json (default: the preset's, else the default model's)",
    )
    p.add_argument("--seq-len", type=POSITIVE, default=128, help="tokens per training window T")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="windows per micro-batch")
    p.add_argument(
        "--accumulate",
        type=POSITIVE,
        default=1,
        help="micro-batches per optimizer step (gradient accumulation)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=POSITIVE, help="optimizer steps (default: --epochs 1)")
    length.add_argument("--epochs", type=POSITIVE, help="passes over the training windows")
    p.add_argument(
        "--lr", type=cli_float(lo=0.0, lo_open=True), default=3e-4, help="peak learning rate"
    )
    p.add_argument(
        "--schedule",
        choices=["cosine", "linear", "constant"],
        default="cosine",
        help="after the warmup",
    )
    p.add_argument("--warmup", type=NON_NEGATIVE, default=0, help="linear warmup steps")
    p.add_argument(
        "--weight-decay",
        type=cli_float(lo=0.0),
        default=0.1,
        help="AdamW decoupled weight decay (not on biases/LayerNorms)",
    )
    p.add_argument(
        "--clip",
        type=cli_float(lo=0.0),
        default=1.0,
        help="global gradient-norm clipping (0: none)",
    )
    p.add_argument(
        "--heldout",
        type=cli_float(0.0, 1.0, lo_open=True, hi_open=True),
        default=0.05,
        help="fraction of windows held out for evaluation",
    )
    p.add_argument(
        "--eval-every",
        type=NON_NEGATIVE,
        default=100,
        help="evaluate on the held-out windows every N steps (0: never)",
    )
    p.add_argument(
        "--eval-batches", type=POSITIVE, default=20, help="held-out batches per evaluation"
    )
    p.add_argument(
        "--save-every",
        type=NON_NEGATIVE,
        default=200,
        help="checkpoint every N steps (0: only at the end and on Ctrl-C)",
    )
    p.add_argument(
        "--seed", type=NON_NEGATIVE, default=0, help="seeds the init, the batch order and dropout"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/LATEST if it exists"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(run=_run_train)


def _check_vocab_fits(tokenizer, config, source):
    if tokenizer.vocabulary_size() > config.vocab_size:
        raise ArgumentError(
            f"--tokenizer {tokenizer.source}: {tokenizer.vocabulary_size()} tokens do not fit the "
            f"model's vocab_size {config.vocab_size} ({source}); expected a tokenizer of at most "
            f"{config.vocab_size} ids"
        )


def _resumed_model(args, ckpt):
    """The model of the run being resumed: the checkpoint's config.json and tokenizer.json, whatever
    --preset / --config / size flags say; any of them (or --tokenizer) that differs is refused."""
    from minibloom.config import BloomConfig
    from minibloom.io import presets
    from minibloom.tokenizer import BloomTokenizer
    from minibloom.training.train import config_difference, tokenizer_difference

    config = BloomConfig.from_json_file(ckpt / "config.json")
    stored = ckpt / "tokenizer.json"
    given = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    if stored.is_file():
        tokenizer = BloomTokenizer.from_file(stored)
        diff = given and tokenizer_difference(given, tokenizer)
        if diff:
            raise ArgumentError(
                f"--tokenizer {given.source} differs from the tokenizer of the run being resumed, {stored} "
                f"({diff}); drop --tokenizer (a resumed run keeps its tokenizer) or choose a new --out"
            )
    elif given is not None:
        tokenizer = given  # an older checkpoint: the user says which tokenizer the run used
    else:
        raise ArgumentError(
            f"--resume: {ckpt} has no tokenizer.json (written by an older minibloom), so the run's "
            f"tokenizer is unknown; pass --tokenizer with the tokenizer the run was started with"
        )
    conflicts = []
    if args.preset:
        directory = presets.resolve(args.preset)
        diff = config_difference(BloomConfig.from_json_file(directory / "config.json"), config)
        if diff:
            conflicts.append(f"--preset {args.preset} ({diff}: the preset vs the checkpoint)")
        elif given is None and (directory / "tokenizer.json").is_file():
            diff = tokenizer_difference(
                BloomTokenizer.from_file(directory / "tokenizer.json"), tokenizer
            )
            if diff:
                conflicts.append(
                    f"--preset {args.preset}'s tokenizer.json ({diff}: the preset vs {stored})"
                )
    if args.config:
        diff = config_difference(BloomConfig.from_json_file(args.config), config)
        if diff:
            conflicts.append(f"--config {args.config} ({diff}: the file vs the checkpoint)")
    for flag, key, _ in SIZE_FLAGS:
        value = getattr(args, flag)
        if value is not None and value != getattr(config, key):
            conflicts.append(f"--{flag} {value} (the checkpoint has {key} {getattr(config, key)})")
    if conflicts:
        raise ArgumentError(
            f"--resume: {'; '.join(conflicts)} conflicts with the run being resumed, {ckpt / 'config.json'}; "
            f"a resumed run keeps its model: drop the flag, or choose a new --out"
        )
    _check_vocab_fits(tokenizer, config, ckpt / "config.json")
    return config, tokenizer


def _build_train_model(args):
    """(lm, ckpt or None) for the train command, checked before anything is allocated or written."""
    from pathlib import Path

    from minibloom.causal_lm import BloomCausalLM
    from minibloom.config import BloomConfig
    from minibloom.model import BloomBackbone
    from minibloom.preprocessor import BloomCausalLMPreprocessor
    from minibloom.tokenizer import BloomTokenizer, default_tokenizer_path
    from minibloom.training.train import check_out_dir, check_training_fits, latest_checkpoint

    out = check_out_dir(args.out, args.resume, name="--out")
    ckpt = latest_checkpoint(Path(out) / "checkpoints") if args.resume else None
    if ckpt is None and args.preset:
        if any(getattr(args, flag) is not None for flag, _, _ in SIZE_FLAGS):
            raise ArgumentError(
                "--layers / --hidden / --heads: the size comes from --preset; drop them"
            )
        lm = BloomCausalLM.from_preset(args.preset)
        if args.tokenizer:
            tokenizer = _load_tokenizer(args.tokenizer)
            _check_vocab_fits(tokenizer, lm.backbone.config, f"--preset {args.preset}")
        elif lm.tokenizer is None:
            raise ArgumentError(
                f"--preset {args.preset}: the model has no tokenizer.json; pass --tokenizer with the "
                f"tokenizer it was trained with"
            )
        else:
            tokenizer = lm.tokenizer
    else:
        if ckpt is not None:
            config, tokenizer = _resumed_model(args, ckpt)
            source = f"the checkpoint {ckpt}"
        else:
            tokenizer = (
                _load_tokenizer(args.tokenizer)
                if args.tokenizer
                else BloomTokenizer.from_file(default_tokenizer_path())
            )
            if args.config:
                if any(getattr(args, flag) is not None for flag, _, _ in SIZE_FLAGS):
                    raise ArgumentError(
                        "--layers / --hidden / --heads: the size comes from --config; drop them"
                    )
                config = BloomConfig.from_json_file(args.config)
                _check_vocab_fits(tokenizer, config, str(args.config))
                source = f"--config {args.config}"
            else:
                sizes = {flag: getattr(args, flag) or default for flag, _, default in SIZE_FLAGS}
                config = BloomConfig.from_keras_kwargs(
                    tokenizer.vocabulary_size(), sizes["layers"], sizes["heads"], sizes["hidden"]
                )
                source = f"--layers {sizes['layers']} --hidden {sizes['hidden']} --heads {sizes['heads']}"
        check_training_fits(
            config, args.batch_size, args.seq_len, with_params=True, source=f"the model of {source}"
        )
        lm = BloomCausalLM(BloomBackbone.from_config(config, seed=args.seed))
        if ckpt is not None and (ckpt / "generation_config.json").is_file():
            from minibloom import config as config_module

            if hasattr(config_module, "GenerationConfig"):
                lm.generation_config = config_module.GenerationConfig.from_model_dir(ckpt, config)
    lm.preprocessor = BloomCausalLMPreprocessor(tokenizer, sequence_length=args.seq_len)
    return lm, out


def _run_train(args):
    from minibloom.training.train import train_on_files

    lm, out = _build_train_model(args)
    train_on_files(
        lm,
        args.data,
        out,
        sequence_length=args.seq_len,
        batch_size=args.batch_size,
        steps=args.steps,
        epochs=None if args.steps else (args.epochs or 1),
        learning_rate=args.lr,
        schedule=args.schedule,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        clip=args.clip,
        accumulate_steps=args.accumulate,
        heldout=args.heldout,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        save_every=args.save_every,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
        log=_log_lines(),
    )


class _Given(argparse.Action):
    """Store the value and remember that the flag was given (for the ignored-flag warnings)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {**getattr(namespace, "given", {}), self.dest: option_string}


def _early_stopping(text):
    choices = {"true": True, "false": False, "never": "never"}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true, false or never, found {text!r}")
    return choices[text.lower()]


# the sampler option each sampling flag sets (samplers.get passes it where the constructor takes it)
_SAMPLER_FLAGS = {
    "temperature": "temperature",
    "top_k": "k",
    "top_p": "p",
    "alpha": "alpha",
    "num_beams": "num_beams",
    "seed": "seed",
    "length_penalty": "length_penalty",
    "early_stopping": "early_stopping",
}


def _ignored_flags(args, sampler):
    """The flags given on the command line that the chosen sampler does not use: HF warns when
    do_sample is false and temperature / top_p are set, and so do we (one line each on stderr);
    the flag does not switch the sampler (that stays --sampler's job)."""
    import inspect

    accepted = set(inspect.signature(type(sampler).__init__).parameters)
    if args.sampler == "greedy":
        accepted.discard("temperature")  # greedy takes it but always picks the argmax
    return [
        flag
        for dest, flag in getattr(args, "given", {}).items()
        if dest in _SAMPLER_FLAGS and _SAMPLER_FLAGS[dest] not in accepted
    ]


def _add_generate(sub):
    p = sub.add_parser(
        "generate",
        help="continue a prompt with a BLOOM model, streaming the text as it is generated",
        description="Continue PROMPT ('-' reads standard input) and stream the text to stdout as it is generated.\n"
        "--max-length counts prompt + new tokens; --max-new-tokens (if given) counts new tokens only.\n"
        "Without --preset the model shipped in weights/ is used. --temperature 0 means greedy whatever the\n"
        "sampler; --seed makes the random samplers reproducible. A sampling flag the chosen sampler does not\n"
        "use (e.g. --top-p with --sampler greedy) gets a warning on stderr and is ignored, as HF warns.\n"
        "Generation stops at </s> (unless --ignore-eos), where the text ends with any --stop text (any\n"
        "length; repeat --stop for several) or at the length limit. The controls\n"
        "(--repetition-penalty, --no-repeat-ngram-size, --min-new-tokens, --max-new-tokens) default to\n"
        "the model's generation_config.json, as in transformers, and so do --num-beams, --length-penalty,\n"
        "--early-stopping, --top-k and --top-p when not given. With --num-return-sequences N > 1 the N\n"
        "texts are printed one after the other, separated by a line '---'.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "prompt",
        metavar="PROMPT",
        help="text to continue; '-' reads standard input (one final newline dropped)",
    )
    p.add_argument(
        "--preset",
        type=_model_dir_arg,
        default=None,
        metavar="NAME_OR_DIR",
        help="model directory, preset name or hf://org/name (none: the shipped model)",
    )
    p.add_argument("--max-length", type=POSITIVE, default=128, help="prompt + completion tokens")
    p.add_argument(
        "--max-new-tokens",
        type=NON_NEGATIVE,
        default=None,
        help="new tokens (wins over --max-length; none: generation_config.json's, else --max-length)",
    )
    p.add_argument(
        "--min-new-tokens",
        type=NON_NEGATIVE,
        default=None,
        help="</s> is impossible before that many new tokens (none: generation_config.json's, else 0)",
    )
    p.add_argument(
        "--repetition-penalty",
        type=cli_float(lo=0.0, lo_open=True),
        default=None,
        help="> 0; tokens already in the text get logit / penalty (x penalty if negative); 1 is off"
        " (none: generation_config.json's, else 1)",
    )
    p.add_argument(
        "--no-repeat-ngram-size",
        type=NON_NEGATIVE,
        default=None,
        help="no n-gram of this many tokens occurs twice; 0 is off (none: generation_config.json's, else 0)",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default="greedy",
        help="how the next token is chosen",
    )
    p.add_argument(
        "--temperature",
        type=cli_float(lo=0.0),
        default=1.0,
        action=_Given,
        help="divides the logits before the softmax; 0 means greedy",
    )
    p.add_argument(
        "--top-k",
        type=POSITIVE,
        default=None,
        action=_Given,
        help="k of top_k and contrastive (not given: generation_config.json's top_k, else 5); for top_p an optional pre-cut",
    )
    p.add_argument(
        "--top-p",
        type=cli_float(0.0, 1.0, lo_open=True),
        default=0.1,
        action=_Given,
        help="nucleus mass p of top_p, in (0, 1] (not given: generation_config.json's top_p, else keras-hub's 0.1)",
    )
    p.add_argument(
        "--alpha",
        type=cli_float(0.0, 1.0),
        default=0.6,
        action=_Given,
        help="degeneration penalty of contrastive search, in [0, 1]",
    )
    p.add_argument(
        "--num-beams",
        type=POSITIVE,
        default=5,
        action=_Given,
        help="beams of beam search (not given: generation_config.json's, else 5)",
    )
    p.add_argument(
        "--length-penalty",
        type=cli_float(),
        default=1.0,
        action=_Given,
        help="beam search: a finished beam scores sum(log p) / length ** this (not given: generation_config.json's, else 1)",
    )
    p.add_argument(
        "--early-stopping",
        type=_early_stopping,
        default=False,
        action=_Given,
        metavar="{true,false,never}",
        help="beam search stopping rule, HF's (not given: generation_config.json's, else false)",
    )
    p.add_argument(
        "--num-return-sequences",
        type=POSITIVE,
        default=1,
        help="texts per prompt: beam search's best beams, or independent samples of a random sampler",
    )
    p.add_argument(
        "--seed",
        type=NON_NEGATIVE,
        default=None,
        action=_Given,
        help="seed of top_k / top_p / random (none: a fresh seed each run)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop once the text ends with TEXT (any number of tokens), besides </s>; repeat for several",
    )
    p.add_argument(
        "--ignore-eos", action="store_true", help="do not stop at </s> (the model's stop ids)"
    )
    p.add_argument(
        "--no-echo", action="store_true", help="print the completion only, not the prompt"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "auto"],
        default="float32",
        help="weights in memory (compute is float32); auto: as the checkpoint stores them "
        "(F16/BF16 kept in 16 bits: decoding reads half the bytes)",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="print prompt tokens, new tokens, prefill time and tokens/s to stderr",
    )
    p.set_defaults(run=_run_generate)


def _run_generate(args):
    from minibloom import samplers
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.errors import PresetNotFoundError
    from minibloom.generate import (
        generate,
        resolve_stop_ids,
        sampler_defaults,
        sampler_for,
        stream_text,
    )

    if sys.stdout is None:
        raise _StdoutError("standard output is closed; nothing to write the generated text to")
    # the one registry (samplers.get): each sampler takes the options it knows; checked here,
    # before the model loads
    options = dict(
        temperature=args.temperature,
        k=args.top_k,
        p=args.top_p,
        seed=args.seed,
        num_beams=args.num_beams,
        alpha=args.alpha,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
    )
    sampler = samplers.get(args.sampler, **options)
    for flag in _ignored_flags(args, sampler):
        _error_line(f"minibloom: warning: {flag} is ignored by --sampler {args.sampler}")
    prompt = _read_text_arg(args.prompt, "PROMPT")
    if args.prompt == "-":
        prompt = prompt.removesuffix("\n")  # the newline that ends piped or typed input
    try:
        lm = BloomCausalLM.from_preset(args.preset, dtype=args.dtype)
    except PresetNotFoundError:
        if args.preset is not None:
            raise
        raise PresetNotFoundError(
            "no default model is shipped in weights/ yet; pass --preset NAME_OR_DIR"
        ) from None
    if lm.preprocessor is None:
        raise ArgumentError(
            f"--preset {args.preset}: the model has no tokenizer.json, so it cannot read text"
        )
    # a sampling flag not given takes the model's generation_config.json value where it has one
    # (num_beams, length_penalty, early_stopping, top_k, top_p), else the flag's default
    given = {_SAMPLER_FLAGS[d] for d in getattr(args, "given", {}) if d in _SAMPLER_FLAGS}
    from_file = sampler_defaults(lm)
    sampler = sampler_for(
        lm,
        args.sampler,
        **{k: v for k, v in options.items() if k in given or k not in from_file},
    )
    # the model's own stop ids (generation config eos, else </s>), unless --ignore-eos
    stops = () if args.ignore_eos else tuple(resolve_stop_ids(lm, "auto"))
    controls = dict(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        stop_strings=list(args.stop) or None,
        num_return_sequences=args.num_return_sequences,
    )
    if args.num_return_sequences > 1:  # several texts: generated whole, printed one after another
        texts = generate(
            lm, prompt, args.max_length, stops, args.no_echo, False, sampler, **controls
        )
        _emit("\n---\n".join(texts))
        return
    stats = {}
    for piece in stream_text(
        lm, prompt, args.max_length, stops, args.no_echo, sampler, stats=stats, **controls
    ):
        _emit(piece, end="")
    _emit()
    if args.stats:
        line = f"prompt tokens {stats['prompt_tokens']}, new tokens {stats['new_tokens']}, prefill {stats['prefill_seconds']:.3f} s"
        if stats["total_seconds"] > 0:
            line += f", {stats['new_tokens'] / stats['total_seconds']:.2f} tokens/s overall"
        if stats["decode_seconds"] > 0 and stats["new_tokens"] > 1:
            line += f", {(stats['new_tokens'] - 1) / stats['decode_seconds']:.2f} tokens/s after the first"
        _error_line(line)


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="score a held-out text file: loss, perplexity and bits per byte",
        description="Read a corpus file as `train` does (plain text with blank lines between documents, or JSON\n"
        'lines with a "text" field, optionally .xz / .gz; each document ended by </s>), score it in\n'
        "consecutive windows of --seq-len tokens, and print the loss per token, the perplexity and bits\n"
        "per byte (total negative log-likelihood in bits / UTF-8 bytes of the text).",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "data",
        metavar="FILE",
        type=cli_file,
        help="corpus file (text, .jsonl, optionally .xz / .gz)",
    )
    p.add_argument(
        "--preset",
        type=_model_dir_arg,
        default=None,
        metavar="NAME_OR_DIR",
        help="model directory or preset name (none: the shipped model)",
    )
    p.add_argument("--seq-len", type=POSITIVE, default=128, help="tokens of context per window T")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="windows per forward pass")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="weights in memory (compute is float32)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    from minibloom.causal_lm import BloomCausalLM
    from minibloom.training.evaluation import evaluate_file

    lm = BloomCausalLM.from_preset(args.preset, dtype=args.dtype)
    m = evaluate_file(
        lm,
        args.data,
        sequence_length=args.seq_len,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    _emit(f"{args.data}: {m['tokens']:,} tokens scored, {m['bytes']:,} bytes")
    _emit(
        f"loss {m['loss']:.4f} nats/token, perplexity {m['perplexity']:.2f}, {m['bits_per_byte']:.4f} bits per byte"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m minibloom",
        description="BLOOM in NumPy: tokenize, generate, train, and check parity with transformers.",
        formatter_class=_Formatter,
    )
    from minibloom import __version__

    parser.add_argument("--version", action="version", version=f"minibloom {__version__}")
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
    _add_compare(sub)
    return parser


def main(argv=None) -> int:
    """Run one command; returns the exit status (0 ok, 1 a failed check, 2 a user error, 130 Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        _error_line(f"minibloom: error: {' '.join(str(e).split())}")
        return 2
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    try:
        return int(args.run(args) or 0)
    except MinibloomError as e:
        if isinstance(e, _StdoutError):
            _silence_stdout()
        _error_line(f"minibloom: error: {' '.join(str(e).split())}")
        return 2
    except KeyboardInterrupt:
        _error_line("minibloom: interrupted")
        return 130
    except BrokenPipeError:  # e.g. `python -m minibloom generate ... | head`
        _silence_stdout()
        return 0
