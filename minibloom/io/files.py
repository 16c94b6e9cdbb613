"""The file primitives every writer and reader in minibloom shares, each written once.

    write_temp / atomic_write / write_bytes_atomic   a new file's bytes go to a hidden temporary
        name next to it, are flushed to disk (fsync), then renamed over the target, and the
        directory is flushed: a crash (even a power cut) leaves the old file or the new one, never
        a partial one. Errors become one MinibloomError line naming the path.
    fsync_directory     make renames in a directory durable
    new_file_mode       the mode `open()` would give (temporary files are created owner-only)
    read_json_file      parse a JSON file, refusing pipes and directories before a read could block
    json_error          a short reason for a json.loads failure

Leaves out: the all-or-nothing replacement of several files (io/checkpoint.commit_files) and of a
directory (training/train.Trainer.save_checkpoint), which are built from these.
"""

import json
import os
import tempfile
from pathlib import Path

from minibloom.errors import CheckpointError, ConfigError


def fsync_directory(directory) -> None:
    """Flush a directory's entries (the names created or renamed in it) to disk.

    A rename is durable only once its directory is flushed. Windows cannot open a directory
    for this; there the call does nothing.
    """
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(path: Path, write, error=CheckpointError) -> Path:
    """Call write(file) on a new hidden temporary file next to `path`, flush it to disk (fsync) and
    give it the mode a new file gets; returns its path. `path` itself is not touched. An OSError
    becomes an `error` naming `path`, with the temporary file removed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise error(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise error(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(path: Path, write, error=CheckpointError) -> None:
    """Call write(file) on a temporary file next to `path`, then move it into place.

    The order is what makes a crash (even a power cut) harmless: write the temporary file,
    flush it to disk (fsync), rename it over `path`, flush the directory. Before the rename the
    old `path` is untouched; after it `path` has the complete new bytes, never an empty or
    partial file. An OSError (disk full, no permission) becomes an `error` (a MinibloomError class,
    CheckpointError by default) naming `path`; whatever was at `path` before is then unchanged.
    """
    tmp = write_temp(path, write, error)
    try:
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise error(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_file_mode(base: int = 0o666) -> int:
    """`base` less the process umask: the mode `open()` gives a new file (or 0o777: a directory).

    Temporary files and directories are created owner-only (0600 / 0700); files renamed into
    place get this mode instead, so a saved model is as readable as any file the user writes.
    """
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return base & ~umask


def write_bytes_atomic(path, data: bytes, error=CheckpointError) -> None:
    """Write `data` to `path` atomically and durably (see `atomic_write`); failures raise `error`."""
    atomic_write(Path(path), lambda f: f.write(data), error)


def json_error(e: Exception) -> str:
    """A short reason for a json.loads failure (bad syntax, absurd nesting, an enormous number)."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)


def read_json_file(path, error=ConfigError, what: str = "config"):
    """Parse a JSON file; any problem raises `error` naming the file: missing, not a regular file
    (a directory, or a pipe that would block the read), not UTF-8, invalid or absurdly nested JSON."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise error(f"{path}: not a regular file; expected a JSON {what} file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read {what} ({e})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or a number with 5000 digits
        raise error(f"{path}: invalid JSON ({json_error(e)})") from None
