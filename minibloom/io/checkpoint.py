"""An HF model directory of BLOOM: which files hold the weights, what the tensors are called,
loading them as checked parameters, and saving a model as only the files it owns.

Covers:
  * single-file and sharded checkpoints (`model.safetensors.index.json` +
    `model-0000k-of-0000n.safetensors`), shard names from the index kept inside the directory;
  * HF key mapping: keys with or without the `transformer.` prefix (BloomForCausalLM vs
    BloomModel), and `lm_head.weight` present or absent (minibloom always ties the head to
    `word_embeddings.weight`, so a present head must equal the embedding);
  * validation against a `BloomConfig` (config.param_shapes): missing, unexpected or mis-shaped
    tensors raise `CheckpointError` naming the tensor, the expected and the found shape; NaN/inf
    weights are refused, warned about or ignored (`load_params(..., nonfinite=...)`);
  * saving: `weight_writers` (F32/F16/BF16, optionally sharded by size) and `commit_files`, which
    replaces a model's files all at once (hidden temporaries, a journal as the commit point) and
    never touches any other file in the directory.

The in-memory dtype (`load_params(..., dtype=...)`), agreed with model.py:
  * "float32" (default): every tensor converted to a C-contiguous float32 array. An F32 file
    costs no copy at all: the arrays are copy-on-write views of the mapping.
  * "float16": tensors are kept in half precision to halve memory. F16 files are used as stored
    (zero-copy views); BF16 and F32 tensors are rounded to float16. model.py's ops widen a
    float16 weight to float32 per use, so all arithmetic still happens in float32.
  * "auto": every tensor kept in its stored dtype, like transformers' `torch_dtype="auto"`: F32
    -> float32, F16 -> float16 and BF16 -> uint16 arrays holding the bfloat16 bit patterns
    (NumPy has no bfloat16; ops.widen turns them into float32 exactly, the fast tier's decode
    reads them with kernels/matvec16.py), all zero-copy views of the mapping when aligned. A
    model loaded so saves back in the same stored dtype.
  * "float64": every tensor widened to float64 (exact: F32, F16 and BF16 values are all
    float64 values). The forward then runs in float64 through the reference ops (the fast tier
    hands float64 to them): the "truth" that `compare` and `parity --truth` measure against.

Leaves out: the container format itself (io/safetensors.py), PyTorch `.bin` files (never
unpickled: unpickling runs arbitrary code; `_PYTORCH_BIN_HINT` says how to convert).
"""

import json
import mmap
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from minibloom.config import BloomConfig, param_shapes
from minibloom.errors import ArgumentError, CheckpointError
from minibloom.io.files import atomic_write, fsync_directory, read_json_file, write_temp
from minibloom.io.safetensors import STORED, bf16_to_f32, read_safetensors, safetensors_writer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREFIX = "transformer."  # what BloomForCausalLM puts in front of BloomModel's keys
HEAD_KEY = "lm_head.weight"
_SAVE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_LOAD_DTYPES = ("float32", "float16", "float64", "auto")
_NONFINITE = ("error", "warn", "ignore")


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
        spec = read_json_file(index, CheckpointError, "safetensors index")
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
    """Stored words -> an array in the in-memory dtype ("float32", "float16", "float64" or "auto":
    as stored, BF16 as its uint16 words)."""
    if dtype == "auto":
        return words if words.flags.aligned else words.copy()  # zero-copy view of the mapping
    if dtype == "float64":
        return (bf16_to_f32(words) if dtype_name == "BF16" else words).astype(np.float64)
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


# 16-bit words whose exponent bits are all ones hold an inf or a NaN
_SPECIAL_EXPONENT = {np.dtype(np.float16): 0x7C00, np.dtype(np.uint16): 0x7F80}  # uint16: BF16


def _first_nonfinite(x: np.ndarray):
    """(index, value) of the first NaN/inf in x, or None. Cheap when all is well: 16-bit tensors
    (float16, bfloat16 words) are checked as integers, in blocks (NumPy's float16 min/max is a
    slow scalar loop); float32/float64 by min and max, which propagate NaN and expose +-inf
    without allocating anything. Only a bad tensor is searched."""
    mask = _SPECIAL_EXPONENT.get(x.dtype)
    if mask is not None:
        flat = x.reshape(-1).view(np.uint16)
        for start in range(0, flat.size, 1 << 20):  # in blocks: no full-size temporary
            bad = np.flatnonzero((flat[start : start + (1 << 20)] & mask) == mask)
            if bad.size:
                idx = np.unravel_index(start + int(bad[0]), x.shape)
                word = np.array([x[idx]], dtype=x.dtype)
                value = bf16_to_f32(word)[0] if x.dtype == np.uint16 else word[0]
                return tuple(int(i) for i in idx), float(value)
        return None
    if x.size == 0 or (np.isfinite(x.min()) and np.isfinite(x.max())):
        return None
    flat = int(np.flatnonzero(~np.isfinite(x))[0])
    idx = np.unravel_index(flat, x.shape)
    return tuple(int(i) for i in idx), float(x[idx])


def _check_load_args(dtype, nonfinite) -> None:
    if dtype not in _LOAD_DTYPES:
        raise ArgumentError(f"dtype: expected one of {_LOAD_DTYPES}, found {dtype!r}")
    if nonfinite not in _NONFINITE:
        raise ArgumentError(f"nonfinite: expected one of {_NONFINITE}, found {nonfinite!r}")


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
    _check_load_args(dtype, nonfinite)
    stored = read_checkpoint(path)
    tensors = {}
    for key, value in stored.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        if name in tensors:
            raise CheckpointError(
                f"{path}: tensor {name!r} is stored both with and without the {PREFIX!r} prefix"
            )
        tensors[name] = value
    return params_from_tensors(tensors, config, dtype, nonfinite, source=path)


def params_from_tensors(
    tensors: dict,
    config: BloomConfig,
    dtype: str = "float32",
    nonfinite: str = "error",
    source="<tensors>",
) -> dict[str, np.ndarray]:
    """The weights layer every format shares: stored tensors -> checked BLOOM parameters.

    tensors: {HF name without `transformer.`: (stored dtype "F32" | "F16" | "BF16", words)},
    `lm_head.weight` optional, as the safetensors reader and the keras-hub reader (io/keras.py)
    produce them. Checks the names and shapes against `config`, the tied head and non-finite
    values (see `load_params`), converts to the in-memory `dtype`; errors name `source`.
    """
    _check_load_args(dtype, nonfinite)
    path = source
    tensors = dict(tensors)
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
    bar = load_bar(sum(tensors[n][1].nbytes for n in expected), f"loading {Path(str(path)).name}")
    for name in expected:
        params[name] = _convert(*tensors[name], dtype)
        if bar is not None:
            bar.update(tensors[name][1].nbytes)
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
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    if bar is not None:
        bar.close()
    return params


LOAD_BAR_BYTES = 512 * 2**20  # checkpoints from this size on show a progress bar while they load


def load_bar(total_bytes, desc):
    """A tqdm bar (on stderr, bytes, cleared when done) for a load of `total_bytes`, or None: small
    loads and a stderr that is not a terminal (logs, pipes, tests) get none."""
    if total_bytes < LOAD_BAR_BYTES or not (sys.stderr is not None and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, leave=False)


# ------------------------------------------------------------------------------------------------
# saving a model directory: only the files we own, all or nothing
# ------------------------------------------------------------------------------------------------

# The files a saved model consists of. A save writes some of these, removes the stale ones of the
# same kinds, and never touches anything else in the directory (a model card, a user's notes,
# sub-directories). The HF files first; then those of a keras-hub preset (io/keras.py), which
# shares config.json and tokenizer.json (in keras' own JSON) and keeps its tokenizer under assets/.
OWNED_FILES = ("config.json", "generation_config.json", "tokenizer.json", SINGLE_FILE, INDEX_FILE)
KERAS_OWNED_FILES = (
    "model.weights.h5",
    "model.weights.json",
    "metadata.json",
    "preprocessor.json",
    "task.json",
    "assets/tokenizer/vocabulary.json",
    "assets/tokenizer/merges.txt",
)
_OWNED_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# keras' weight shards (named by model.weights.json)
KERAS_SHARD = re.compile(r"^model_\d{5}\.weights\.h5$")
_OWNED_DIRS = ("", "assets/tokenizer")  # the only folders (relative to the model) a save writes in
JOURNAL = ".minibloom-save.json"  # present only between a save's commit point and its end
_TEMP = re.compile(
    r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$"
)  # what files.write_temp creates: .NAME.<random>.tmp


def is_owned_file(name: str) -> bool:
    """True for the file names (relative to the model directory, `/`-separated) a model save may
    write or remove."""
    return (
        name in OWNED_FILES
        or name in KERAS_OWNED_FILES
        or bool(_OWNED_SHARD.fullmatch(name) or KERAS_SHARD.fullmatch(name))
    )


def _sibling(name: str, base: str) -> str:
    """The relative name of the file `base` in the folder of the relative name `name`."""
    folder = name.rpartition("/")[0]
    return f"{folder}/{base}" if folder else base


def _is_temp_of(tmp: str, name: str) -> bool:
    """True if `tmp` is a write_temp name of `name` (same folder, `.NAME.<random>.tmp`)."""
    folder, _, base = name.rpartition("/")
    tmp_folder, _, tmp_base = tmp.rpartition("/")
    m = _TEMP.fullmatch(tmp_base)
    return folder == tmp_folder and m is not None and m["name"] == base


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
            and _is_temp_of(pair[0], pair[1])
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
    for folder in _OWNED_DIRS:
        for p in (directory / folder).glob(".*.tmp"):
            m = _TEMP.fullmatch(p.name)
            name = m and _sibling(f"{folder}/x" if folder else "x", m["name"])
            if m and (is_owned_file(name) or name == JOURNAL) and p.is_file():
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
                f"commit_files: {name!r} is not a model file name ({', '.join(OWNED_FILES + KERAS_OWNED_FILES)}, shards)"
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
            temps.append(write_temp(directory / name, writers[name], error))
        spec = {
            "format": "minibloom-save",
            "rename": [[_sibling(n, t.name), n] for t, n in zip(temps, names)],
            "remove": list(remove),
        }
        atomic_write(
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
    itemsize = STORED[st_dtype].itemsize
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
