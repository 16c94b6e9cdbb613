"""The one set of argument checks, used at every boundary: the CLI (as argparse `type=`) and the API.

Each check takes the argument's name as the user spelt it (`--batch-size` on the command line,
`batch_size` in Python), the value and the accepted range, and either returns the value in its
canonical type or raises `ArgumentError` with one line naming the argument, the accepted range and
what was found:

    check_int("batch_size", 0, lo=1)      -> ArgumentError "batch_size: expected an integer >= 1, found 0"
    check_float("lr", -1.0, lo=0, lo_open=True)
                                          -> ArgumentError "lr: expected a finite number > 0, found -1.0"
    expand_path("--data", "~nosuchuser/x") -> ArgumentError "--data: cannot expand '~nosuchuser/x' (no user 'nosuchuser')"

`cli_int`, `cli_float`, `cli_path`, `cli_file` wrap the same checks for argparse: they parse the
string, run the check and turn its ArgumentError into argparse's error, which the CLI prints as
`minibloom: error: argument --batch-size: expected an integer >= 1, found 0` (exit status 2).

Leaves out: checks that need the model or the data (an id against the vocabulary size, a window
count against the corpus); those stay next to the code that knows the bound, and use these
helpers for the message.
"""

import argparse
import math
import os
import stat
from pathlib import Path

import numpy as np

from minibloom.errors import ArgumentError


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range(kind: str, lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    """'an integer >= 1', 'a finite number in (0, 1]', ... for the messages."""
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {_num(hi)}"
    return kind


def _found(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value, lo=None, hi=None) -> int:
    """`value` as an int in [lo, hi] (either bound may be None), else ArgumentError naming `name`.

    Accepts Python and NumPy integers, never bools or floats (2.0 is refused: a float where a count
    belongs is usually a mistake in the caller)."""
    expected = _range("an integer", lo, hi)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name}: expected {expected}, found {_found(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ArgumentError(f"{name}: expected {expected}, found {value}")
    return value


def check_float(
    name: str, value, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False
) -> float:
    """`value` as a finite float in the range (open or closed at each end), else ArgumentError."""
    expected = _range("a finite number", lo, hi, lo_open, hi_open)
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ArgumentError(f"{name}: expected {expected}, found {_found(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentError(f"{name}: expected {expected}, found {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ArgumentError(f"{name}: expected {expected}, found {value:g}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ArgumentError(f"{name}: expected {expected}, found {value:g}")
    return value


def check_choice(name: str, value, choices) -> object:
    """`value` if it is one of `choices`, else ArgumentError listing them."""
    if value not in choices:
        raise ArgumentError(
            f"{name}: expected one of {', '.join(map(repr, choices))}, found {_found(value)}"
        )
    return value


def expand_path(name: str, value) -> Path:
    """`value` as a Path with `~` / `~user` expanded, else ArgumentError (empty, NUL byte, unknown user)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{name}: expected a path, found {_found(value)}")
    text = os.fspath(value)
    if isinstance(text, bytes) or not text or "\0" in text:
        raise ArgumentError(
            f"{name}: expected a non-empty path without NUL bytes, found {_found(text)}"
        )
    try:
        return Path(text).expanduser()
    except RuntimeError:  # Path.expanduser: "Could not determine home directory" / no such user
        user = text[1:].split("/", 1)[0]
        why = f"no user {user!r}" if user else "the home directory is unknown (HOME is not set)"
        raise ArgumentError(f"{name}: cannot expand {_found(text)} ({why})") from None


def check_input_file(name: str, value) -> Path:
    """An existing regular file (not a directory, pipe or device), expanded; else ArgumentError."""
    path = expand_path(name, value)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ArgumentError(f"{name}: {path}: no such file") from None
    except OSError as e:  # a component that is a file (ENOTDIR), a name too long, no permission
        raise ArgumentError(f"{name}: {path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ArgumentError(f"{name}: {path} is a directory; expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise ArgumentError(
            f"{name}: {path} is not a regular file (a pipe or a device); expected a file"
        )
    return path


def check_output_dir(name: str, value) -> Path:
    """A directory to write into: absent (it will be created) or an existing directory; expanded.

    Refuses an existing non-directory at the path or on the way to it (a file where a directory is
    wanted) before anything is written."""
    path = expand_path(name, value)
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "" if p == path else f" (its parent {p} is not a directory)"
                raise ArgumentError(
                    f"{name}: {path} exists and is not a directory{where}; expected a directory"
                )
            break
    return path


# ------------------------------------------------------------------------------------------------
# argparse `type=` versions: parse the string, run the same check, report through argparse
# ------------------------------------------------------------------------------------------------


def _argparse_type(check, parse=None, label=None):
    """An argparse `type=` callable: parse(text) then check(value); errors become argparse's."""

    def convert(text):
        try:
            value = text if parse is None else parse(text)
        except ValueError:
            value = text  # the check refuses it with the expected range
        try:
            return check(value)
        except ArgumentError as e:  # argparse prefixes "argument --name: "; drop our own name
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    convert.__name__ = label or getattr(check, "__name__", "value")
    return convert


def cli_int(lo=None, hi=None):
    """argparse type: an integer in [lo, hi]."""
    return _argparse_type(lambda v: check_int("value", v, lo, hi), int, "int")


def cli_float(lo=None, hi=None, lo_open=False, hi_open=False):
    """argparse type: a finite number in the range."""
    return _argparse_type(
        lambda v: check_float("value", v, lo, hi, lo_open, hi_open), float, "float"
    )


def cli_path(text):
    """argparse type: a path, `~` expanded (refused if it cannot be)."""
    return _argparse_type(lambda v: expand_path("value", v), None, "path")(text)


def cli_file(text):
    """argparse type: an existing regular file."""
    return _argparse_type(lambda v: check_input_file("value", v), None, "file")(text)


def cli_output_dir(text):
    """argparse type: a directory to write into (absent or a directory)."""
    return _argparse_type(lambda v: check_output_dir("value", v), None, "directory")(text)
