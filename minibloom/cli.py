"""`python -m minibloom`: the command-line interface.

One argparse subcommand per job. Every option and its default is declared here, in one place,
and `--help` on any subcommand shows them. Handlers are thin: they parse, call the library, and
print. A `MinibloomError` (a user mistake or a bad file) is printed as a single line
`minibloom: error: ...` and the process exits with status 2; nothing else is caught, so a real bug
still shows its traceback.
"""

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minibloom",
        description="BLOOM in NumPy: tokenize, generate, train, and check parity with transformers.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The order here is the order `--help` lists the commands in.
    # (each _add_* declares one subcommand and sets its handler with set_defaults(run=...))
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
