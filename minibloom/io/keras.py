"""keras-hub presets of BLOOM: read the directories keras-hub's `save_to_preset` writes, write ours.

A keras-hub preset (a Kaggle download of `bloom_560m_multi`, or any `save_to_preset` output):

    config.json                      {"class_name": "BloomBackbone", "config": {vocabulary_size,
                                      num_layers, num_heads, hidden_dim, intermediate_dim, dropout,
                                      layer_norm_epsilon, dtype}, "registered_name": ...}
    model.weights.h5                 keras 3 HDF5: the backbone's variables (below)
    (or model.weights.json + model_0000k.weights.h5 shards)
    tokenizer.json                   a keras layer config (NOT an HF tokenizer.json)
    assets/tokenizer/vocabulary.json + merges.txt    the BPE tables
    preprocessor.json, task.json     the BloomCausalLMPreprocessor / BloomCausalLM configs (optional)
    metadata.json                    versions and date (never read, by keras-hub either)

keras 3 names each layer of the functional model by its class and a per-class counter, in the
order of the model's layer list (token_ids, token_embedding, embedding_layernorm, padding_mask,
transformer_layer_0 .. L-1, final_layernorm), and the sub-layers of a decoder by attribute name;
variable k of a layer is the dataset `<layer>/vars/<k>`. So every variable's role follows from
its path (`layers/layer_normalization` is the embedding LayerNorm, `layers/layer_normalization_1`
the final one), which `_variables` lists. The mapping to HF names (ARCHITECTURE.md):

  * q/k/v EinsumDense kernels (C, H, D) and biases (H, D) -> the fused, head-interleaved
    `query_key_value` (3C, C) / (3C,): row h*3D + j*D + d holds head h, part j (q, k, v), dim d;
  * Dense kernels (in, out) -> HF (out, in), transposed; LayerNorm gamma/beta -> weight/bias;
  * the ReversibleEmbedding (tied) -> `word_embeddings.weight`, as stored.

float32 and float16 datasets are stored natively; bfloat16 ones as 2-byte opaque words with the
attribute dtype="bfloat16" (keras' convention), read here as BF16 words without ml_dtypes. The
{HF name: (dtype, words)} result goes through io/checkpoint.params_from_tensors, the same checks
as a safetensors checkpoint. HDF5 needs `h5py` (the `keras` extra).

Writing (`preset_writers`) produces what keras-hub's `BloomCausalLM.from_preset` and
`BloomBackbone.from_preset` load: the files above (only the datasets of the variables, which is
all keras reads), one .h5 file (keras reads it at any size), committed all at once by
io/checkpoint.commit_files.

Leaves out: keras presets of other models, task weights (BloomCausalLM has none: its head is the
tied embedding), writing sharded .h5 files.
"""

import io
import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np

from minibloom.config import BloomConfig
from minibloom.errors import ArgumentError, CheckpointError, ConfigError
from minibloom.io.checkpoint import KERAS_SHARD, params_from_tensors
from minibloom.io.files import read_json_file
from minibloom.io.safetensors import bf16_to_f32, f32_to_bf16

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
TOKENIZER_FILE = "tokenizer.json"
PREPROCESSOR_FILE = "preprocessor.json"
TASK_FILE = "task.json"
METADATA_FILE = "metadata.json"
VOCABULARY_FILE = "assets/tokenizer/vocabulary.json"
MERGES_FILE = "assets/tokenizer/merges.txt"
KERAS_INSTALL = "pip install 'minibloom[keras]'"
BACKBONE_KEYS = ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim")
SPECIAL = ("<s>", "</s>", "<pad>")  # keras-hub's BloomTokenizer needs all three
# keras-hub's BloomCausalLMPreprocessor defaults, used when a preset has no preprocessor.json
PREPROCESSOR_DEFAULTS = {"sequence_length": 1024, "add_start_token": True, "add_end_token": True}
_MODULE = "keras_hub.src.models.bloom."


def _h5py(path):
    try:
        import h5py  # optional: the `keras` extra
    except ImportError:
        raise CheckpointError(
            f"{path}: keras-hub weights are HDF5 files, which need h5py: {KERAS_INSTALL}"
        ) from None
    return h5py


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------


def is_keras_config(d) -> bool:
    """True for keras' serialization of an object: {"class_name", "config", "registered_name"...}."""
    return isinstance(d, dict) and ("registered_name" in d or ("class_name" in d and "config" in d))


def is_keras_preset(directory) -> bool:
    """True if `directory/config.json` is a keras config (keras-hub's own test, `registered_name`).
    An unreadable config.json is not a keras preset: the HF reader then names its problem."""
    try:
        return is_keras_config(read_json_file(Path(directory) / CONFIG_FILE))
    except ConfigError:
        return False


def _class_of(d) -> str:
    name = d.get("registered_name") or d.get("class_name") or ""
    return str(name).rpartition(">")[
        2
    ]  # "keras_hub>BloomBackbone" (or keras_nlp>) -> BloomBackbone


def read_config(directory, tokenizer=None) -> BloomConfig:
    """The BloomConfig of a keras-hub preset's config.json; the special-token ids come from
    `tokenizer` (keras keeps them there, not in the config) when given."""
    path = Path(directory) / CONFIG_FILE
    d = read_json_file(path, ConfigError, "keras-hub backbone config")
    if not is_keras_config(d) or _class_of(d) != "BloomBackbone":
        found = _class_of(d) if isinstance(d, dict) else type(d).__name__
        raise ConfigError(
            f"{path}: expected keras-hub's BloomBackbone config, found class {found[:60]!r}"
        )
    c = d.get("config")
    if not isinstance(c, dict):
        raise ConfigError(f"{path}: 'config' should be an object of BloomBackbone arguments")
    missing = [k for k in BACKBONE_KEYS if k not in c]
    if missing:
        raise ConfigError(f"{path}: BloomBackbone config is missing {', '.join(missing)}")
    ids = {}
    if tokenizer is not None:
        for field, token in (
            ("unk_token_id", "<unk>"),
            ("bos_token_id", "<s>"),
            ("eos_token_id", "</s>"),
            ("pad_token_id", "<pad>"),
        ):
            ids[field] = tokenizer.token_to_id(token)
    try:
        return BloomConfig.from_keras_kwargs(
            c["vocabulary_size"],
            c["num_layers"],
            c["num_heads"],
            c["hidden_dim"],
            c["intermediate_dim"],
            c.get("dropout", 0.0),
            c.get("layer_norm_epsilon", 1e-5),
            **ids,
        )
    except ConfigError as e:
        raise ConfigError(f"{path}: {str(e).removeprefix('config: ')}") from None


def _dtype_policy(name: str) -> dict:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}}


def _serialized(cls: str, module: str, config: dict) -> dict:
    return {
        "module": _MODULE + module,
        "class_name": cls,
        "config": config,
        "registered_name": f"keras_hub>{cls}",
    }


def backbone_config(config: BloomConfig, dtype: str = "float32") -> dict:
    """keras-hub's serialized BloomBackbone (config.json) for `config`."""
    if config.apply_residual_connection_post_layernorm:
        raise ArgumentError(
            "format='keras': keras-hub's BloomBackbone has no apply_residual_connection_post_layernorm; "
            "this model cannot be written as a keras-hub preset"
        )
    if config.hidden_dropout != config.attention_dropout:
        raise ArgumentError(
            f"format='keras': keras-hub has one dropout rate, this model has hidden_dropout "
            f"{config.hidden_dropout} and attention_dropout {config.attention_dropout}"
        )
    return _serialized(
        "BloomBackbone",
        "bloom_backbone",
        {
            "name": "bloom_backbone",
            "trainable": True,
            "dtype": _dtype_policy(dtype),
            "vocabulary_size": config.vocab_size,
            "num_layers": config.n_layer,
            "num_heads": config.n_head,
            "hidden_dim": config.hidden_size,
            "intermediate_dim": config.ffn_size,
            "dropout": config.hidden_dropout,
            "layer_norm_epsilon": config.layer_norm_epsilon,
        },
    )


def read_preprocessor_settings(directory) -> dict:
    """{sequence_length, add_start_token, add_end_token} of preprocessor.json (else task.json's
    preprocessor, else keras-hub's defaults)."""
    directory = Path(directory)
    spec = None
    if (directory / PREPROCESSOR_FILE).is_file():
        spec = read_json_file(directory / PREPROCESSOR_FILE, ConfigError, "keras-hub preprocessor")
    elif (directory / TASK_FILE).is_file():
        task = read_json_file(directory / TASK_FILE, ConfigError, "keras-hub task")
        spec = task.get("config", {}).get("preprocessor") if isinstance(task, dict) else None
    c = spec.get("config") if isinstance(spec, dict) else None
    out = dict(PREPROCESSOR_DEFAULTS)
    if isinstance(c, dict):
        for k in out:
            if c.get(k) is not None:
                out[k] = c[k]
    return out


# ------------------------------------------------------------------------------------------------
# model.weights.h5: which dataset holds what
# ------------------------------------------------------------------------------------------------


def _variables(config: BloomConfig):
    """[(dataset path, shape, HF name, part)] of every backbone variable; part is None for a
    tensor copied as is, "T" for a transposed Dense kernel, or ("q"|"k"|"v", "kernel"|"bias")
    for one third of the fused query_key_value."""
    C, H, D, F, V = (
        config.hidden_size,
        config.n_head,
        config.head_dim,
        config.ffn_size,
        config.vocab_size,
    )
    out = [
        ("layers/reversible_embedding/vars/0", (V, C), "word_embeddings.weight", None),
        ("layers/layer_normalization/vars/0", (C,), "word_embeddings_layernorm.weight", None),
        ("layers/layer_normalization/vars/1", (C,), "word_embeddings_layernorm.bias", None),
    ]
    for i in range(config.n_layer):
        b = "layers/bloom_decoder" + (f"_{i}" if i else "")
        h = f"h.{i}."
        out += [
            (f"{b}/_pre_attention_layernorm/vars/0", (C,), h + "input_layernorm.weight", None),
            (f"{b}/_pre_attention_layernorm/vars/1", (C,), h + "input_layernorm.bias", None),
        ]
        for j, part in enumerate("qkv"):
            dense = f"{b}/_self_attention_layer/_{('query', 'key', 'value')[j]}_dense/vars"
            qkv = h + "self_attention.query_key_value."
            out += [
                (f"{dense}/0", (C, H, D), qkv + "weight", (part, "kernel")),
                (f"{dense}/1", (H, D), qkv + "bias", (part, "bias")),
            ]
        attn_out = f"{b}/_self_attention_layer/_output_dense/vars"
        out += [
            (f"{attn_out}/0", (C, C), h + "self_attention.dense.weight", "T"),
            (f"{attn_out}/1", (C,), h + "self_attention.dense.bias", None),
            (
                f"{b}/_post_attention_layernorm/vars/0",
                (C,),
                h + "post_attention_layernorm.weight",
                None,
            ),
            (
                f"{b}/_post_attention_layernorm/vars/1",
                (C,),
                h + "post_attention_layernorm.bias",
                None,
            ),
            (f"{b}/_mlp_intermediate_dense/vars/0", (C, F), h + "mlp.dense_h_to_4h.weight", "T"),
            (f"{b}/_mlp_intermediate_dense/vars/1", (F,), h + "mlp.dense_h_to_4h.bias", None),
            (f"{b}/_mlp_output_dense/vars/0", (F, C), h + "mlp.dense_4h_to_h.weight", "T"),
            (f"{b}/_mlp_output_dense/vars/1", (C,), h + "mlp.dense_4h_to_h.bias", None),
        ]
    out += [
        ("layers/layer_normalization_1/vars/0", (C,), "ln_f.weight", None),
        ("layers/layer_normalization_1/vars/1", (C,), "ln_f.bias", None),
    ]
    return out


def weight_files(directory) -> list[Path]:
    """model.weights.h5, or the shards model.weights.json names (plain names, in the directory)."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).exists():
        return [directory / WEIGHTS_FILE]
    index = directory / SHARDED_WEIGHTS_FILE
    if not index.exists():
        raise CheckpointError(f"{directory}: keras-hub preset without {WEIGHTS_FILE}")
    spec = read_json_file(index, CheckpointError, "keras sharded weights index")
    weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: expected an object with a 'weight_map'")
    names = set()
    for v in weight_map.values():
        names.update(v if isinstance(v, list) else [v])
    for n in names:
        if not isinstance(n, str) or not KERAS_SHARD.fullmatch(n):
            raise CheckpointError(f"{index}: shard {n!r:.100} is not a model_NNNNN.weights.h5 name")
        if not (directory / n).is_file():
            raise CheckpointError(f"{index}: lists shard {n!r}, which is missing from {directory}")
    return [directory / n for n in sorted(names)]


def _stored(ds, file, path):
    """A dataset -> (stored dtype name, words) as the safetensors reader gives them."""
    dt = ds.dtype
    if dt == np.float32:
        code = "F32"
    elif dt == np.float16:
        code = "F16"
    elif dt.kind == "V" and dt.itemsize == 2 and ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        code = "BF16"
    else:
        raise CheckpointError(
            f"{file}: variable {path!r} has dtype {dt}; expected float32, float16 or bfloat16"
        )
    try:
        words = ds[()]
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: variable {path!r} cannot be read ({e})") from None
    return code, (words.view(np.uint16) if code == "BF16" else words)


def read_tensors(directory, config: BloomConfig) -> dict:
    """{HF name: (stored dtype, words)} of a keras-hub preset's weights, fused and transposed.

    Raises CheckpointError naming the file and the variable for a missing variable, a wrong
    shape or dtype, or a file that is not (or no longer, e.g. truncated) readable HDF5.
    """
    files = weight_files(directory)
    h5py = _h5py(files[0])
    handles = []
    try:
        for file in files:
            try:
                handles.append((file, h5py.File(file, "r")))
            except (OSError, ValueError) as e:
                raise CheckpointError(
                    f"{file}: not a readable keras weights file (HDF5: {e})"
                ) from None
        tensors, parts = {}, {}
        for path, shape, name, part in _variables(config):
            where = [(file, h[path]) for file, h in handles if _has_dataset(h, path, h5py)]
            if not where:
                raise CheckpointError(
                    f"{files[0] if len(files) == 1 else directory}: variable {path!r} ({name}) is missing"
                )
            file, ds = where[0]
            if tuple(ds.shape) != shape:
                raise CheckpointError(
                    f"{file}: variable {path!r} ({name}) has shape {tuple(ds.shape)}, expected {shape} "
                    f"from {CONFIG_FILE}"
                )
            code, words = _stored(ds, file, path)
            if part is None:
                tensors[name] = (code, words)
            elif part == "T":
                tensors[name] = (code, np.ascontiguousarray(words.T))
            else:
                parts.setdefault(name, {})[part] = (code, words, file)
        for name, got in parts.items():
            codes = {code for code, _, _ in got.values()}
            if len(codes) > 1:
                file = next(iter(got.values()))[2]
                raise CheckpointError(
                    f"{file}: the query, key and value variables of {name} are stored in different "
                    f"dtypes {sorted(codes)}"
                )
            kind = "kernel" if name.endswith("weight") else "bias"
            q, k, v = (got[(p, kind)][1] for p in "qkv")
            if kind == "kernel":  # (C, H, D) x 3 -> (C, H, 3, D) -> (C, 3C) -> (3C, C)
                C = q.shape[0]
                fused = np.ascontiguousarray(np.stack([q, k, v], axis=2).reshape(C, 3 * C).T)
            else:  # (H, D) x 3 -> (H, 3, D) -> (3C,)
                fused = np.stack([q, k, v], axis=1).reshape(-1)
            tensors[name] = (codes.pop(), fused)
        return tensors
    finally:
        for _, h in handles:
            h.close()


def _has_dataset(h, path, h5py) -> bool:
    try:
        return isinstance(h.get(path), h5py.Dataset)
    except (OSError, ValueError, KeyError):  # a damaged group on the way
        return False


def load_params(directory, config: BloomConfig, dtype="float32", nonfinite="error"):
    """(checked BLOOM parameters keyed by HF names, their stored dtype name) of a keras-hub preset."""
    tensors = read_tensors(directory, config)
    params = params_from_tensors(
        tensors, config, dtype, nonfinite, source=weight_files(directory)[0]
    )
    return params, stored_dtype(tensors)


_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def stored_dtype(tensors: dict) -> str:
    """ "float32", "float16" or "bfloat16": how `read_tensors`' result stores the token embedding."""
    return _DTYPE_NAMES[tensors["word_embeddings.weight"][0]]


# ------------------------------------------------------------------------------------------------
# writing a preset
# ------------------------------------------------------------------------------------------------


def _keras_variables(params: dict, config: BloomConfig, dtype: str) -> list:
    """[(dataset path, array in the stored dtype)] of `params` (HF names) in keras' layout."""
    H, D, C = config.n_head, config.head_dim, config.hidden_size
    out = []
    for path, shape, name, part in _variables(config):
        x = params[name]
        x = (
            bf16_to_f32(x) if x.dtype == np.uint16 else np.asarray(x, dtype=np.float32)
        )  # bf16 words
        if part == "T":
            x = x.T
        elif part is not None:
            j = "qkv".index(part[0])
            if part[1] == "kernel":  # (3C, C) -> (C, 3C) -> (C, H, 3, D) -> [:, :, j, :]
                x = x.T.reshape(C, H, 3, D)[:, :, j, :]
            else:
                x = x.reshape(H, 3, D)[:, j, :]
        assert x.shape == shape, (path, x.shape, shape)
        out.append((path, np.ascontiguousarray(x)))
    if dtype == "float16":
        out = [(p, x.astype(np.float16)) for p, x in out]
    elif dtype == "bfloat16":
        out = [(p, f32_to_bf16(x).view("V2")) for p, x in out]
    return out


def h5_writer(params: dict, config: BloomConfig, dtype: str = "float32"):
    """write(file) of a keras model.weights.h5 holding `params` (HF names) in `dtype`."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ArgumentError(f"dtype: expected float32, float16 or bfloat16, found {dtype!r}")
    h5py = _h5py(WEIGHTS_FILE)

    def write(f):
        # h5py writes through a read-write handle on the same (O_RDWR) temporary file descriptor
        raw = io.FileIO(os.dup(f.fileno()), "r+")
        try:
            with h5py.File(raw, "w") as h:
                for path, x in _keras_variables(params, config, dtype):
                    ds = h.create_dataset(path, data=x)
                    if dtype == "bfloat16":
                        ds.attrs["dtype"] = "bfloat16"
        finally:
            raw.close()

    return write


def tokenizer_config() -> dict:
    return _serialized(
        "BloomTokenizer",
        "bloom_tokenizer",
        {
            "name": "bloom_tokenizer",
            "trainable": True,
            "dtype": _dtype_policy("int32"),
            "config_file": TOKENIZER_FILE,
            "sequence_length": None,
            "add_prefix_space": False,
            "unsplittable_tokens": list(SPECIAL),
        },
    )


def preprocessor_config(preprocessor) -> dict:
    return _serialized(
        "BloomCausalLMPreprocessor",
        "bloom_causal_lm_preprocessor",
        {
            "name": "bloom_causal_lm_preprocessor",
            "trainable": True,
            "dtype": _dtype_policy("float32"),
            "tokenizer": tokenizer_config(),
            "config_file": PREPROCESSOR_FILE,
            "sequence_length": preprocessor.sequence_length,
            "add_start_token": preprocessor.add_start_token,
            "add_end_token": preprocessor.add_end_token,
        },
    )


def _json_writer(obj):
    data = json.dumps(obj, indent=4).encode("utf-8")
    return lambda f: f.write(data)


def preset_writers(lm, dtype: str) -> dict:
    """{relative file name: write(file)} of the keras-hub preset of `lm` (a BloomCausalLM)."""
    config = lm.backbone.config
    backbone = backbone_config(config, dtype)
    writers = {CONFIG_FILE: _json_writer(backbone)}
    writers[WEIGHTS_FILE] = h5_writer(lm.backbone.params, config, dtype)
    metadata = {
        "saved_by": "minibloom",
        "parameter_count": config.num_parameters(),
        "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": ["CausalLM"],
    }
    writers[METADATA_FILE] = _json_writer(metadata)
    pre = None
    if lm.preprocessor is not None:
        tok = lm.preprocessor.tokenizer
        absent = [t for t in SPECIAL if tok.token_to_id(t) is None]
        if absent:
            raise ArgumentError(
                f"format='keras': the tokenizer has no {', '.join(absent)}; keras-hub's BloomTokenizer "
                f"needs <s>, </s> and <pad> in its vocabulary"
            )
        vocab_text, merges_text = tok.keras_asset_texts()
        writers[VOCABULARY_FILE] = _text_writer(vocab_text)
        writers[MERGES_FILE] = _text_writer(merges_text)
        writers[TOKENIZER_FILE] = _json_writer(tokenizer_config())
        pre = preprocessor_config(lm.preprocessor)
        writers[PREPROCESSOR_FILE] = _json_writer(pre)
    task = _serialized(
        "BloomCausalLM",
        "bloom_causal_lm",
        {"backbone": backbone, "preprocessor": pre, "name": "bloom_causal_lm"},
    )
    writers[TASK_FILE] = _json_writer(task)
    return writers


def _text_writer(text: str):
    data = text.encode("utf-8")
    return lambda f: f.write(data)


# ------------------------------------------------------------------------------------------------
# which files of a directory a save replaces
# ------------------------------------------------------------------------------------------------


def stale_weight_files(directory) -> list[str]:
    """The keras weight files a save into `directory` replaces: model.weights.h5, and
    model.weights.json with the shards of keras' naming it lists."""
    directory = Path(directory)
    stale = [n for n in (WEIGHTS_FILE, SHARDED_WEIGHTS_FILE) if (directory / n).is_file()]
    stale += sorted(
        p.name for p in directory.glob("model_*.weights.h5") if KERAS_SHARD.fullmatch(p.name)
    )
    return stale


def format_files(directory, fmt: str) -> list[str]:
    """The files of format `fmt` ("hf" or "keras") present in `directory` besides config.json and
    the weights: what a save in the other format removes, so no mix of the two is left."""
    from minibloom.io.checkpoint import KERAS_OWNED_FILES

    directory = Path(directory)
    names = (
        ("generation_config.json", TOKENIZER_FILE)
        if fmt == "hf"
        else (*KERAS_OWNED_FILES, TOKENIZER_FILE)
    )
    return [n for n in names if (directory / n).is_file()]
