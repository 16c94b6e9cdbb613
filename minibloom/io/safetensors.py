"""The safetensors container, read and written by hand (no `safetensors` package at run time).

  * layout: 8-byte little-endian header length N, N bytes of JSON
    `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the raw
    little-endian tensor bytes (offsets are relative to the end of the header);
  * dtypes F32, F16 and BF16. NumPy has no bfloat16, so BF16 is read as raw uint16 words and widened
    by hand (a bfloat16 is the top 16 bits of a float32), and written with round-to-nearest-even;
    a uint16 array given to the writer is taken as bfloat16 words (minibloom's in-memory bfloat16,
    ops.widen): written as they are to BF16, widened exactly for F32/F16;
  * memory mapping: a file is mapped once (`mmap`, private copy-on-write) and every tensor is a view
    into the mapping, so nothing is read until it is used and a 3B checkpoint never sits in RAM
    twice. (A mapped array stays valid when its file is replaced with os.replace, as our writer
    does, but not if another program truncates the file in place.)
  * hostile files: every header number is checked against the file size (Python ints, before any
    allocation or mapping), and pipes / devices are refused before a read could block
    (docs/RELIABILITY.md);
  * writing through io/files.py's atomic writer.

Leaves out: which files make a model and what the tensors are called (io/checkpoint.py),
integer/quantized dtypes, and big-endian machines.
"""

import json
import math
import mmap
import stat
from pathlib import Path

import numpy as np

from minibloom.errors import ArgumentError, CheckpointError
from minibloom.io.files import atomic_write, json_error

# safetensors dtype name -> numpy dtype of the stored words (BF16: uint16 words, widened by hand).
STORED = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses headers above 100 MB
_MAX_NDIM = 32  # numpy allows 64 dimensions; no real checkpoint comes near either
_MAX_DIM = 1 << 48  # a larger dimension cannot describe bytes in any file (and keeps reshape safe)


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
            f"{path}: safetensors header is not valid JSON ({json_error(e)})"
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
        if not isinstance(dtype, str) or dtype not in STORED:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {dtype!r:.50}; minibloom reads {sorted(STORED)}"
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
            math.prod(shape) * STORED[dtype].itemsize
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
            name: (info["dtype"], np.zeros(info["shape"], STORED[info["dtype"]]))
            for name, info in header.items()
        }
    with open(path, "rb") as f:  # the mapping stays valid after the file is closed
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private, copy-on-write
    data = np.frombuffer(mapping, dtype=np.uint8, offset=data_start)  # (bytes,) the data section
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = data[begin:end].view(STORED[info["dtype"]]).reshape(info["shape"])  # as in the header
        tensors[name] = (info["dtype"], arr)
    return tensors


def _encode(name: str, x: np.ndarray, dtype: str) -> np.ndarray:
    """An array -> its stored words in safetensors dtype `dtype` (little-endian, C order)."""
    x = np.asarray(x)
    if x.dtype == np.uint16:  # bfloat16 words (a model loaded with dtype="auto", see ops.widen)
        if dtype == "BF16":
            return np.ascontiguousarray(x, dtype="<u2")  # stored as they are
        x = bf16_to_f32(x)
    if x.dtype.kind != "f":
        raise CheckpointError(
            f"tensor {name!r}: expected a floating-point array, found dtype {x.dtype}"
        )
    if dtype == "BF16":
        return f32_to_bf16(x.astype(np.float32, copy=False))
    return np.ascontiguousarray(x, dtype=STORED[dtype])


def write_safetensors(
    path, tensors: dict, dtype: str = "F32", metadata: dict | None = None
) -> None:
    """Write {name: array} as one safetensors file in `dtype` ("F32", "F16" or "BF16"), atomically."""
    atomic_write(Path(path), safetensors_writer(tensors, dtype, metadata))


def safetensors_writer(tensors: dict, dtype: str = "F32", metadata: dict | None = None):
    """A function write(file) that writes {name: array} as safetensors bytes in `dtype`."""
    if dtype not in STORED:
        raise ArgumentError(f"dtype: expected one of {sorted(STORED)}, found {dtype!r}")
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
