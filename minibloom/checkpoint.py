"""Reading and writing HF safetensors checkpoints of BLOOM, by hand.

Covers:
  * the safetensors container: 8-byte little-endian header length N, N bytes of JSON
    `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the raw
    little-endian tensor bytes (offsets are relative to the end of the header);
  * dtypes F32, F16 and BF16. NumPy has no bfloat16, so BF16 is read as raw uint16 words and widened
    by hand (a bfloat16 is the top 16 bits of a float32), and written with round-to-nearest-even;
  * memory mapping: a file is mapped once (`mmap`, private copy-on-write) and every tensor is a view
    into the mapping, so nothing is read until it is used and a 3B checkpoint never sits in RAM
    twice. The only real copy is the conversion to the in-memory dtype. (A mapped array stays
    valid when its file is replaced with os.replace, as our writer does, but not if another
    program truncates the file in place.)
  * sharded checkpoints (`model.safetensors.index.json` + `model-0000k-of-0000n.safetensors`);
  * HF key mapping: keys with or without the `transformer.` prefix (BloomForCausalLM vs
    BloomModel), and `lm_head.weight` present or absent (minibloom always ties the head to
    `word_embeddings.weight`, so a present head must equal the embedding);
  * validation against a `BloomConfig`: missing, unexpected or mis-shaped tensors raise
    `CheckpointError` naming the tensor, the expected and the found shape; NaN/inf weights are
    refused, warned about or ignored (`load_params(..., nonfinite=...)`);
  * hostile files: every header number is checked against the file size (Python ints, before
    any allocation or mapping), shard names in an index cannot leave the checkpoint directory,
    and pipes / devices are refused before a read could block (docs/RELIABILITY.md);
  * writing: F32/F16/BF16, optionally sharded by size, each file written to a temporary name,
    flushed to disk (fsync) and moved into place with `os.replace`, so a crash never leaves a
    half-written file.

The in-memory dtype (`load_params(..., dtype=...)`), agreed with model.py:
  * "float32" (default): every tensor converted to a C-contiguous float32 array. An F32 file
    costs no copy at all: the arrays are copy-on-write views of the mapping.
  * "float16": tensors are kept in half precision to halve memory. F16 files are used as stored
    (zero-copy views); BF16 and F32 tensors are rounded to float16. model.py's ops widen a
    float16 weight to float32 per use, so all arithmetic still happens in float32.

Leaves out: PyTorch `.bin` files (never unpickled: unpickling runs arbitrary code; see
`_pytorch_bin_message` for how to convert), integer/quantized dtypes, and big-endian machines.
"""

import json
import math
import mmap
import os
import re
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np

from minibloom.config import BloomConfig, param_shapes
from minibloom.errors import ArgumentError, CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREFIX = "transformer."  # what BloomForCausalLM puts in front of BloomModel's keys
HEAD_KEY = "lm_head.weight"

# safetensors dtype name -> (numpy dtype of the stored words, bytes per element).
# BF16 is stored as uint16 words: numpy has no bfloat16, we widen them by hand.
_STORED = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
_SAVE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_LOAD_DTYPES = ("float32", "float16")
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses headers above 100 MB
_MAX_NDIM = 32  # numpy allows 64 dimensions; no real checkpoint comes near either
_MAX_DIM = 1 << 48  # a larger dimension cannot describe bytes in any file (and keeps reshape safe)
_NONFINITE = ("error", "warn", "ignore")


# ------------------------------------------------------------------------------------------------
# bfloat16 by hand
# ------------------------------------------------------------------------------------------------


def bf16_to_f32(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 bfloat16 words -> float32: the word becomes the top half of a float32 bit pattern."""
    out = np.empty(words.shape, dtype=np.float32) if out is None else out
    bits = out.view(np.uint32)
    bits[...] = words  # zero-extend each 16-bit word into the 32-bit slot ...
    bits <<= 16  # ... and move it to the top: sign, 8 exponent bits, 7 mantissa bits
    return out


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 words, rounding to nearest, ties to even (as torch does).

    Adding 0x7FFF plus the lowest kept bit to the 32-bit pattern and dropping the low 16 bits
    rounds the mantissa to nearest-even; a carry out of the mantissa correctly bumps the exponent
    (up to infinity). NaN is kept a (quiet) NaN instead of being rounded into infinity.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> 16) & 1
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


# ------------------------------------------------------------------------------------------------
# one .safetensors file
# ------------------------------------------------------------------------------------------------


def _json_error(e: Exception) -> str:
    """A short reason for a json.loads failure (bad syntax, absurd nesting, an enormous number)."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path) -> tuple[dict, int]:
    """Parse and validate a safetensors header.

    Returns ({name: {"dtype", "shape", "data_offsets"}}, data_start) where data_start is the file
    offset of the first tensor byte. Raises CheckpointError naming the file and the tensor.

    Everything is checked against the file size before anything is allocated or mapped: the
    header length (at most 100 MB, like the reference reader), each tensor's dtype, shape (at
    most _MAX_NDIM non-negative dimensions) and data_offsets (inside the data section, matching
    shape * itemsize, no two tensors overlapping). A header claiming a 2**40-element tensor is
    rejected by arithmetic on Python ints, never by trying to allocate it.
    """
    path = Path(path)
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):  # reading a pipe or a device could block forever
            raise CheckpointError(
                f"{path}: not a regular file (a pipe or a device?); expected a .safetensors file"
            )
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: {size} bytes is too short for a safetensors file (needs an 8-byte header length)"
                )
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{path}: header length {n} does not fit in a {size}-byte file (not a safetensors file, or truncated)"
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights file ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (
        UnicodeDecodeError,
        ValueError,
        RecursionError,
    ) as e:  # ValueError covers JSONDecodeError
        raise CheckpointError(
            f"{path}: safetensors header is not valid JSON ({_json_error(e)})"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: safetensors header must be a JSON object, found {type(header).__name__}"
        )
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path}: __metadata__ must be a JSON object of strings, found {type(metadata).__name__}"
        )
    data_start = 8 + n
    data_size = size - data_start
    spans = []  # (begin, end, name) of every non-empty tensor, to find overlaps
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointError(
                f"{path}: tensor {name!r} header entry needs dtype, shape and data_offsets, found {info!r:.200}"
            )
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _STORED:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {dtype!r:.50}; minibloom reads {sorted(_STORED)}"
            )
        if not (
            isinstance(shape, list)
            and len(shape) <= _MAX_NDIM
            and all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape)
        ):
            raise CheckpointError(
                f"{path}: tensor {name!r} has an invalid shape {shape!r:.200}; expected a list of at most {_MAX_NDIM} "
                f"integers in [0, 2**48]"
            )
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
        ):
            raise CheckpointError(
                f"{path}: tensor {name!r} has data_offsets {offsets!r:.200}; expected [begin, end] integers"
            )
        begin, end = offsets
        nbytes = (
            math.prod(shape) * _STORED[dtype].itemsize
        )  # Python ints: no overflow, no allocation
        if not (0 <= begin <= end <= data_size) or end - begin != nbytes:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes, but data_offsets {offsets} "
                f"give {end - begin} within a {data_size}-byte data section (file truncated or corrupt?)"
            )
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(
                f"{path}: tensors {a!r} and {b!r} overlap in the data section (bytes {begin_b}..{end_a})"
            )
    return header, data_start


def read_safetensors(path) -> dict[str, tuple[str, np.ndarray]]:
    """Map a safetensors file; returns {name: (dtype_name, stored_words)} without reading any data.

    Each array is a copy-on-write view of the file mapping (writable; pages are copied only if
    written), holding the stored words: float32, float16, or uint16 for BF16.
    """
    header, data_start = read_header(path)
    if not header:
        return {}
    size = Path(path).stat().st_size
    if size == data_start:  # only empty tensors: nothing to map
        return {
            name: (info["dtype"], np.zeros(info["shape"], _STORED[info["dtype"]]))
            for name, info in header.items()
        }
    with open(path, "rb") as f:  # the mapping stays valid after the file is closed
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private, copy-on-write
    data = np.frombuffer(mapping, dtype=np.uint8, offset=data_start)  # (bytes,) the data section
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = (
            data[begin:end].view(_STORED[info["dtype"]]).reshape(info["shape"])
        )  # as in the header
        tensors[name] = (info["dtype"], arr)
    return tensors


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


def _write_temp(path: Path, write, error=CheckpointError) -> Path:
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


def _atomic_write(path: Path, write, error=CheckpointError) -> None:
    """Call write(file) on a temporary file next to `path`, then move it into place.

    The order is what makes a crash (even a power cut) harmless: write the temporary file,
    flush it to disk (fsync), rename it over `path`, flush the directory. Before the rename the
    old `path` is untouched; after it `path` has the complete new bytes, never an empty or
    partial file. An OSError (disk full, no permission) becomes an `error` (a MinibloomError class,
    CheckpointError by default) naming `path`; whatever was at `path` before is then unchanged.
    """
    tmp = _write_temp(path, write, error)
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
    """Write `data` to `path` atomically and durably (see `_atomic_write`); failures raise `error`."""
    _atomic_write(Path(path), lambda f: f.write(data), error)


def _encode(name: str, x: np.ndarray, dtype: str) -> np.ndarray:
    """An array -> its stored words in safetensors dtype `dtype` (little-endian, C order)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise CheckpointError(
            f"tensor {name!r}: expected a floating-point array, found dtype {x.dtype}"
        )
    if dtype == "BF16":
        return f32_to_bf16(x.astype(np.float32, copy=False))
    return np.ascontiguousarray(x, dtype=_STORED[dtype])


def write_safetensors(
    path, tensors: dict, dtype: str = "F32", metadata: dict | None = None
) -> None:
    """Write {name: array} as one safetensors file in `dtype` ("F32", "F16" or "BF16"), atomically."""
    _atomic_write(Path(path), safetensors_writer(tensors, dtype, metadata))


def safetensors_writer(tensors: dict, dtype: str = "F32", metadata: dict | None = None):
    """A function write(file) that writes {name: array} as safetensors bytes in `dtype`."""
    if dtype not in _STORED:
        raise ArgumentError(f"dtype: expected one of {sorted(_STORED)}, found {dtype!r}")
    words = {name: _encode(name, x, dtype) for name, x in sorted(tensors.items())}
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, w in words.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(w.shape),
            "data_offsets": [offset, offset + w.nbytes],
        }
        offset += w.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned

    def write(f):
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for w in words.values():
            f.write(w.tobytes() if w.ndim == 0 else memoryview(w.reshape(-1)).cast("B"))

    return write


# ------------------------------------------------------------------------------------------------
# a checkpoint directory: single file or shards
# ------------------------------------------------------------------------------------------------

_PYTORCH_BIN_HINT = """\
minibloom reads only safetensors and never unpickles PyTorch .bin files (unpickling can run \
arbitrary code). Convert the checkpoint once, with transformers installed:

    from transformers import BloomForCausalLM, AutoTokenizer
    model = BloomForCausalLM.from_pretrained("{dir}")
    model.save_pretrained("{dir}-safetensors", safe_serialization=True)
    AutoTokenizer.from_pretrained("{dir}").save_pretrained("{dir}-safetensors")

then load "{dir}-safetensors"."""

_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$")


def _shard_roots(directory: Path) -> list[Path]:
    """Where the real files of a checkpoint's shards may live once symlinks are followed.

    The directory itself; and for an HF hub cache snapshot (`models--org--name/snapshots/<rev>/`,
    whose files are symlinks to `../../blobs/<hash>`) also that repository's `blobs/` folder.
    """
    roots = [directory.resolve()]
    if directory.resolve().parent.name == "snapshots":
        roots.append(directory.resolve().parent.parent / "blobs")
    return roots


def checkpoint_files(directory) -> list[Path]:
    """The .safetensors files making up the checkpoint in `directory` (index file first if sharded)."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.exists():
        if not index.is_file():  # a pipe would block the read below
            raise CheckpointError(f"{index}: not a regular file; expected a JSON safetensors index")
        try:
            spec = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CheckpointError(
                f"{index}: not a valid safetensors index, expected JSON ({_json_error(e)})"
            ) from None
        weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{index}: expected an object with a non-empty 'weight_map' {{tensor name: shard file}}, found "
                f"{type(weight_map if isinstance(spec, dict) else spec).__name__}"
            )
        for tensor, name in weight_map.items():
            if not isinstance(name, str):
                raise CheckpointError(
                    f"{index}: weight_map[{tensor!r}] should be a shard file name, found {name!r:.100}"
                )
        names = sorted(set(weight_map.values()))
        roots = _shard_roots(directory)
        for name in names:
            # the index is data from the internet: refuse names that would leave the directory,
            # by spelling (`../x`, `/etc/x`, `a\b`) and after following symlinks
            if not _SHARD_NAME.fullmatch(name) or ".." in name:
                raise CheckpointError(
                    f"{index}: shard file name {name!r:.100} is not a plain *.safetensors file name in {directory}"
                )
            if not (directory / name).exists():
                raise CheckpointError(
                    f"{index}: lists shard {name!r}, which is missing from {directory}"
                )
            if not any((directory / name).resolve().is_relative_to(root) for root in roots):
                raise CheckpointError(
                    f"{index}: shard {name!r} is a symlink leading outside {directory}; refused"
                )
        return [directory / n for n in names]
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    others = sorted(directory.glob("*.safetensors"))
    if len(others) == 1:
        return others
    if others:
        raise CheckpointError(
            f"{directory}: {len(others)} .safetensors files but no {INDEX_FILE} to say how they fit together"
        )
    if list(directory.glob("pytorch_model*.bin")):
        raise CheckpointError(
            f"{directory}: holds only pytorch_model*.bin. "
            + _PYTORCH_BIN_HINT.format(dir=directory)
        )
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")


def read_checkpoint(path) -> dict[str, tuple[str, np.ndarray]]:
    """Map every tensor of a checkpoint (a directory or one .safetensors file), keys as stored.

    Returns {name: (dtype_name, stored_words)}; see `read_safetensors`.
    """
    path = Path(path)
    if path.is_dir():
        finish_interrupted_save(path)  # a save killed after its commit point: complete it first
    files = checkpoint_files(path) if path.is_dir() else [path]
    tensors, where = {}, {}
    for file in files:
        for name, value in read_safetensors(file).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in both {where[name]} and {file}")
            tensors[name], where[name] = value, file
    return tensors


# ------------------------------------------------------------------------------------------------
# BLOOM parameters: HF names (config.param_shapes), dtype conversion
# ------------------------------------------------------------------------------------------------


def _empty_float32(shape) -> np.ndarray:
    """np.empty(shape, float32), but with every page mapped up front for large arrays.

    A speed hack for loading, nothing else: on some virtual machines the first touch of each
    fresh 4 KB page is slow (we measured 6 s of page faults to fill bloom-560m's 1 GB embedding,
    versus 0.7 s to pre-fault it with MAP_POPULATE). Linux only; elsewhere plain np.empty.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * 4
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or nbytes < (1 << 22):
        return np.empty(shape, np.float32)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(buf, dtype=np.float32).reshape(shape)


def _release_pages(words: np.ndarray) -> None:
    """Let the kernel drop the mapped file pages under `words` once they have been converted.

    Without this, a converted checkpoint stays resident twice until load_params returns (the
    file pages plus the float32 copy), which sets the peak memory of a load. The pages are clean
    (nothing wrote to them), so dropping them loses nothing: a later read re-faults them.
    """
    base = words
    while isinstance(base, np.ndarray):
        base = base.base
    dontneed = getattr(mmap, "MADV_DONTNEED", None)
    if (
        dontneed is None
        or words.nbytes == 0
        or not (isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap))
    ):
        return
    mapping = base.obj
    start = words.ctypes.data - np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    aligned = start - start % mmap.PAGESIZE
    mapping.madvise(dontneed, aligned, start + words.nbytes - aligned)


def _convert(dtype_name: str, words: np.ndarray, dtype: str) -> np.ndarray:
    """Stored words -> an array in the in-memory dtype ("float32" or "float16")."""
    if dtype == "float32":
        if dtype_name == "F32":
            return words if words.flags.aligned else words.copy()  # zero-copy view of the mapping
        out = _empty_float32(words.shape)
        if dtype_name == "F16":
            out[...] = words
            return out
        return bf16_to_f32(words, out)
    if dtype_name == "F16":
        return words if words.flags.aligned else words.copy()
    if dtype_name == "BF16":
        return bf16_to_f32(words).astype(np.float16)
    return words.astype(np.float16)


def _list(items, n=5) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _first_nonfinite(x: np.ndarray):
    """(index, value) of the first NaN/inf in x, or None. Cheap when all is well: min and max
    propagate NaN and expose +-inf without allocating anything; only a bad tensor is searched."""
    if x.size == 0 or (np.isfinite(x.min()) and np.isfinite(x.max())):
        return None
    flat = int(np.flatnonzero(~np.isfinite(x))[0])
    idx = np.unravel_index(flat, x.shape)
    return tuple(int(i) for i in idx), float(x[idx])


def load_params(
    path, config: BloomConfig, dtype: str = "float32", nonfinite: str = "error"
) -> dict[str, np.ndarray]:
    """Load BLOOM parameters from a checkpoint directory (or one .safetensors file).

    Keys come back without the `transformer.` prefix, as in ARCHITECTURE.md. Every tensor is
    checked against `config`: a missing, unexpected or mis-shaped tensor raises CheckpointError
    naming it. `lm_head.weight`, if stored, must equal `word_embeddings.weight` (minibloom ties
    the head and would otherwise compute different logits than the checkpoint's author).

    `nonfinite` says what a NaN or infinite weight does: "error" (default: raise CheckpointError
    naming the tensor and the first bad element; a released checkpoint never holds one, so it
    means corruption), "warn" (a RuntimeWarning, then load anyway) or "ignore" (no check; skips a
    min+max pass over every tensor, which also reads every page of a memory-mapped F32 file).
    """
    if dtype not in _LOAD_DTYPES:
        raise ArgumentError(f"dtype: expected one of {_LOAD_DTYPES}, found {dtype!r}")
    if nonfinite not in _NONFINITE:
        raise ArgumentError(f"nonfinite: expected one of {_NONFINITE}, found {nonfinite!r}")
    stored = read_checkpoint(path)
    tensors = {}
    for key, value in stored.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        if name in tensors:
            raise CheckpointError(
                f"{path}: tensor {name!r} is stored both with and without the {PREFIX!r} prefix"
            )
        tensors[name] = value

    expected = param_shapes(config)
    head = tensors.pop(HEAD_KEY, None)
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_list(unexpected)}")
        raise CheckpointError(
            f"{path}: checkpoint does not match its config (n_layer={config.n_layer}): "
            + "; ".join(parts)
        )
    for name, shape in expected.items():
        found = tuple(tensors[name][1].shape)
        if found != shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {found}, expected {shape} from the config"
            )
    if head is not None:
        emb = tensors["word_embeddings.weight"]
        if head[0] == emb[0]:  # same stored dtype: compare the stored words, no conversion
            same = head[1].shape == emb[1].shape and np.array_equal(head[1], emb[1])
        else:
            same = head[1].shape == emb[1].shape and np.array_equal(
                _convert(*head, "float32"), _convert(*emb, "float32")
            )
        if not same:
            raise CheckpointError(
                f"{path}: {HEAD_KEY} differs from word_embeddings.weight; minibloom ties the LM head to the "
                f"embedding (as every released BLOOM does) and cannot load an untied head"
            )
    params = {}
    for name in expected:
        params[name] = _convert(*tensors[name], dtype)
        if params[name] is not tensors[name][1]:  # converted: the mapped words are no longer needed
            _release_pages(tensors[name][1])
        bad = None if nonfinite == "ignore" else _first_nonfinite(params[name])
        if bad is not None:
            msg = (
                f"{path}: tensor {name!r} holds non-finite values (first: {bad[1]} at index {bad[0]}); "
                f"expected finite weights (file corrupt, or saved from a diverged run)"
            )
            if nonfinite == "error":
                raise CheckpointError(msg + "; pass nonfinite='warn' or 'ignore' to load it anyway")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return params


# ------------------------------------------------------------------------------------------------
# saving a model directory: only the files we own, all or nothing
# ------------------------------------------------------------------------------------------------

# The files a saved model consists of. A save writes some of these, removes the stale ones of the
# same kinds, and never touches anything else in the directory (a model card, a user's notes,
# sub-directories).
OWNED_FILES = ("config.json", "generation_config.json", "tokenizer.json", SINGLE_FILE, INDEX_FILE)
_OWNED_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
JOURNAL = ".minibloom-save.json"  # present only between a save's commit point and its end
_TEMP = re.compile(
    r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$"
)  # what _write_temp creates: .NAME.<random>.tmp


def is_owned_file(name: str) -> bool:
    """True for the file names a model save may write or remove."""
    return name in OWNED_FILES or bool(_OWNED_SHARD.fullmatch(name))


def _read_journal(directory: Path) -> dict:
    path = directory / JOURNAL
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        renames, removes = spec["rename"], spec["remove"]
        ok = all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, str) for n in pair)
            and is_owned_file(pair[1])
            and (m := _TEMP.fullmatch(pair[0])) is not None
            and m["name"] == pair[1]
            for pair in renames
        ) and all(isinstance(n, str) and is_owned_file(n) for n in removes)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(
            f"{path}: not a save journal written by minibloom; remove it by hand if it is not yours"
        )
    return spec


def finish_interrupted_save(directory) -> bool:
    """Complete a save that was interrupted after its commit point; True if there was one.

    A save writes every new file under a hidden temporary name first, then writes the journal
    `.minibloom-save.json` (the commit point: all new bytes are on disk), then renames the files
    into place, removes the stale ones and deletes the journal. A journal found here means the
    writer died during those renames: doing them again (they are idempotent) gives the complete
    new model. Called by every loader and every save, so a crash never leaves a mix of versions.
    """
    directory = Path(directory)
    if not (directory / JOURNAL).is_file():
        return False
    spec = _read_journal(directory)
    try:
        for tmp, name in spec["rename"]:
            if (directory / tmp).exists():
                os.replace(directory / tmp, directory / name)
        for name in spec["remove"]:
            (directory / name).unlink(missing_ok=True)
        fsync_directory(directory)
        (directory / JOURNAL).unlink()
        fsync_directory(directory)
    except OSError as e:
        raise CheckpointError(
            f"{directory}: an interrupted save could not be completed ({e.strerror or e}); the new files are whole "
            f"under hidden names listed in {JOURNAL}: make the directory writable and load it again"
        ) from None
    return True


def _remove_leftover_temps(directory: Path) -> None:
    """Delete the hidden temporary files of a save that died before its commit point."""
    for p in directory.glob(".*.tmp"):
        m = _TEMP.fullmatch(p.name)
        if m and (is_owned_file(m["name"]) or m["name"] == JOURNAL) and p.is_file():
            p.unlink(missing_ok=True)


def commit_files(directory, writers: dict, remove=(), error=CheckpointError) -> list[Path]:
    """Write the files {name: write(file)} into `directory` and delete the files `remove`, all or nothing.

    Every new file is written under a hidden temporary name and flushed; then a journal naming
    the renames is written atomically (the commit point); then the renames and removals happen
    and the journal is deleted (see `finish_interrupted_save`). A crash before the commit point
    leaves the directory as it was (the temporaries are removed by the next save); a crash after
    it is completed by the next load or save. Other files in the directory are never touched.
    An OSError becomes `error` naming the path, with the directory unchanged.
    """
    directory = Path(directory)
    names = list(writers)
    for name in [*names, *remove]:
        if not is_owned_file(name):
            raise ArgumentError(
                f"commit_files: {name!r} is not a model file name ({', '.join(OWNED_FILES)}, shards)"
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"{directory}: cannot create the directory ({e.strerror or e})") from None
    finish_interrupted_save(directory)
    _remove_leftover_temps(directory)
    temps = []
    try:
        for name in names:
            temps.append(_write_temp(directory / name, writers[name], error))
        spec = {
            "format": "minibloom-save",
            "rename": [[t.name, n] for t, n in zip(temps, names)],
            "remove": list(remove),
        }
        _atomic_write(
            directory / JOURNAL,
            lambda f: f.write(json.dumps(spec, indent=1).encode("utf-8")),
            error,
        )
    except error as e:
        for t in temps:
            t.unlink(missing_ok=True)
        raise error(f"{e}; {directory} is unchanged") from None
    except BaseException:
        for t in temps:
            t.unlink(missing_ok=True)
        raise
    try:
        finish_interrupted_save(directory)
    except CheckpointError as e:
        raise error(str(e)) from None
    return [directory / n for n in names]


def stale_weight_files(directory) -> list[str]:
    """The weight files a save into `directory` replaces: model.safetensors, the index and the
    shards the index names (only names of the owned shard pattern: a hostile index cannot make a
    save delete other files). An unreadable index names no shards."""
    directory = Path(directory)
    stale = [n for n in (SINGLE_FILE, INDEX_FILE) if (directory / n).is_file()]
    if INDEX_FILE in stale:
        try:
            weight_map = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8")).get(
                "weight_map", {}
            )
            stale += sorted(
                {n for n in weight_map.values() if isinstance(n, str) and _OWNED_SHARD.fullmatch(n)}
            )
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
            pass
    return stale


def weight_writers(
    params: dict, dtype: str = "float32", max_shard_bytes: int | None = None, prefix: str = ""
) -> dict:
    """{file name: write(file)} of an HF checkpoint of `params` (see save_params)."""
    if dtype not in _SAVE_DTYPES:
        raise ArgumentError(f"dtype: expected one of {sorted(_SAVE_DTYPES)}, found {dtype!r}")
    if max_shard_bytes is not None and (
        isinstance(max_shard_bytes, bool)
        or not isinstance(max_shard_bytes, int)
        or max_shard_bytes < 1
    ):
        raise ArgumentError(
            f"max_shard_bytes: expected a positive integer or None, found {max_shard_bytes!r}"
        )
    st_dtype = _SAVE_DTYPES[dtype]
    names = list(params)  # keep the model's order (embedding, blocks, ln_f)
    if max_shard_bytes is None:
        return {
            SINGLE_FILE: safetensors_writer(
                {prefix + n: params[n] for n in names}, st_dtype, {"format": "pt"}
            )
        }
    itemsize = _STORED[st_dtype].itemsize
    shards, current, current_bytes = [], [], 0
    for n in names:
        nbytes = int(np.asarray(params[n]).size) * itemsize
        if current and current_bytes + nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(n)
        current_bytes += nbytes
    if current:
        shards.append(current)
    writers, weight_map = {}, {}
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        writers[fname] = safetensors_writer(
            {prefix + n: params[n] for n in shard}, st_dtype, {"format": "pt"}
        )
        weight_map.update({prefix + n: fname for n in shard})
    total = sum(int(np.asarray(params[n]).size) * itemsize for n in names)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    index_bytes = (json.dumps(index, indent=2) + "\n").encode("utf-8")
    return {INDEX_FILE: lambda f: f.write(index_bytes), **writers}


def save_params(
    directory,
    params: dict,
    dtype: str = "float32",
    max_shard_bytes: int | None = None,
    prefix: str = "",
) -> list[Path]:
    """Write parameters as an HF checkpoint into `directory`; returns the files written.

    `dtype` is the stored dtype: "float32", "float16" or "bfloat16" (rounded to nearest even).
    With `max_shard_bytes`, tensors are packed in order into shards of at most that size (a
    tensor bigger than the limit gets a shard of its own) plus `model.safetensors.index.json`,
    as transformers' `save_pretrained(max_shard_size=...)` does. `prefix` is put before every key
    ("transformer." writes BloomForCausalLM-style keys; the default "" is BloomModel-style, as in
    the official bigscience repositories; transformers loads both).
    The weight files of an earlier checkpoint in the directory (model.safetensors, the index and
    the shards it names) are replaced all at once (`commit_files`); no other file is touched.
    """
    writers = weight_writers(params, dtype, max_shard_bytes, prefix)
    stale = [n for n in stale_weight_files(directory) if n not in writers]
    return commit_files(directory, writers, stale)


def stored_dtype(path) -> str:
    """The dtype a checkpoint stores its word embedding in ("float32", "float16" or "bfloat16"):
    what `save_to_preset` writes by default, so a model comes back as it was loaded."""
    names = {v: k for k, v in _SAVE_DTYPES.items()}
    stored = read_checkpoint(path)
    for key in ("word_embeddings.weight", PREFIX + "word_embeddings.weight"):
        if key in stored:
            return names[stored[key][0]]
    return names[next(iter(stored.values()))[0]] if stored else "float32"
