"""BloomConfig: the hyper-parameters of a BLOOM model, read from and written to HF `config.json`.

Covers every key spelling that real BLOOM configs use (`hidden_size`/`n_embed`,
`n_layer`/`num_hidden_layers`, `n_head`/`num_attention_heads`), keeps keys it does not know so
that a round trip loses nothing, and rejects nonsense (sizes <= 0, hidden size not divisible by
heads) with a `ConfigError` naming the key.

A config must name BLOOM's four size keys (vocab_size, hidden_size, n_layer, n_head, in any of
their spellings): a JSON file without them (a keras-hub preset's config.json, another model's)
is refused with a `ConfigError`, never read as a default-sized model. The dataclass defaults only
serve Python construction (`BloomConfig(hidden_size=..., ...)`).

`GenerationConfig` holds the ids `generate` needs, read from HF `generation_config.json` (or, as
transformers does when that file is absent, from config.json): the stop ids (`eos_token_id`, one
id or a list), `pad_token_id` and `bos_token_id`. Other keys are kept for the round trip.

Leaves out: HF's `pretraining_tp`/`slow_but_exact` Megatron replay (kept as unknown keys; they do
not change the math of released checkpoints) and the sampling settings of generation_config.json
(kept, not interpreted).
"""

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from minibloom.errors import ConfigError
from minibloom.io.files import read_json_file

# HF config.json spellings -> our field name. The first spelling listed is the one we write.
_ALIASES = {
    "hidden_size": ("hidden_size", "n_embed"),
    "n_layer": ("n_layer", "num_hidden_layers"),
    "n_head": ("n_head", "num_attention_heads"),
}

# The sizes a config must state (each in one of its spellings); nothing else is required.
_REQUIRED = ("vocab_size", "hidden_size", "n_layer", "n_head")

_MAX_PARAMETERS = 10**12  # 5x the largest BLOOM; more is a typo, and would be a huge allocation


@dataclass
class BloomConfig:
    """BLOOM hyper-parameters, named as in HF `config.json`.

    `intermediate_size` is the MLP width F; HF BLOOM always uses 4 * hidden_size and ignores any
    other value, so None means 4 * hidden_size and only that value round-trips through
    transformers.
    """

    vocab_size: int = 250880
    hidden_size: int = 64
    n_layer: int = 2
    n_head: int = 8
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    apply_residual_connection_post_layernorm: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 3  # transformers 5 writes null: generation then pads with eos
    unk_token_id: int | None = 0
    intermediate_size: int | None = None
    extra: dict = field(default_factory=dict)  # keys we do not interpret, kept for the round trip

    def __post_init__(self):
        self.validate()

    # -- derived sizes ---------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_head

    @property
    def ffn_size(self) -> int:
        return 4 * self.hidden_size if self.intermediate_size is None else self.intermediate_size

    def num_parameters(self) -> int:
        """Parameter count with the tied head: V*C + L*(2*C*F + 4*C*C + 9*C + F) + 4*C."""
        C, F, V, L = self.hidden_size, self.ffn_size, self.vocab_size, self.n_layer
        per_layer = (3 * C * C + 3 * C) + (C * C + C) + (F * C + F) + (C * F + C) + 4 * C
        return V * C + L * per_layer + 4 * C

    # -- checks ----------------------------------------------------------------------------------

    def validate(self, source: str = "config") -> None:
        for name in ("vocab_size", "hidden_size", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{source}: `{name}` must be a positive integer, found {value!r}")
        if self.intermediate_size is not None and (
            isinstance(self.intermediate_size, bool)
            or not isinstance(self.intermediate_size, int)
            or self.intermediate_size <= 0
        ):
            raise ConfigError(
                f"{source}: `intermediate_size` must be a positive integer, found {self.intermediate_size!r}"
            )
        if self.hidden_size % self.n_head:
            raise ConfigError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by n_head {self.n_head} "
                f"(each head gets hidden_size / n_head features)"
            )
        if self.num_parameters() > _MAX_PARAMETERS:
            raise ConfigError(
                f"{source}: sizes describe {self.num_parameters():.3g} parameters (vocab_size {self.vocab_size}, "
                f"hidden_size {self.hidden_size}, n_layer {self.n_layer}); expected at most {_MAX_PARAMETERS:.0e} "
                f"(BLOOM-176B has 1.8e11): a typo or a corrupt config"
            )
        init = self.initializer_range
        if (
            isinstance(init, bool)
            or not isinstance(init, (int, float))
            or not (0 <= init < math.inf)
        ):
            raise ConfigError(
                f"{source}: `initializer_range` must be a finite number >= 0, found {init!r}"
            )
        if not isinstance(self.apply_residual_connection_post_layernorm, bool):
            raise ConfigError(
                f"{source}: `apply_residual_connection_post_layernorm` must be true or false, "
                f"found {self.apply_residual_connection_post_layernorm!r}"
            )
        eps = self.layer_norm_epsilon
        if (
            isinstance(eps, bool)
            or not isinstance(eps, (int, float))
            or not (0 < eps < 1)
            or not math.isfinite(eps)
        ):
            raise ConfigError(
                f"{source}: `layer_norm_epsilon` must be a small positive number, found {eps!r}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p < 1.0):
                raise ConfigError(f"{source}: `{name}` must be in [0, 1), found {p!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value < self.vocab_size
            ):
                raise ConfigError(
                    f"{source}: `{name}` must be a token id in [0, {self.vocab_size}), found {value!r}"
                )

    # -- HF config.json --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BloomConfig":
        """Build from an HF-style dict, accepting every spelling real configs use."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
        if (
            "class_name" in d and "config" in d
        ):  # keras' serialization: {"module", "class_name", "config", ...}
            raise ConfigError(
                f"{source}: a keras config (class_name {str(d['class_name'])[:60]!r}), not an HF BLOOM config.json; "
                f"minibloom reads HF model directories (config.json with model_type 'bloom')"
            )
        missing = [
            name for name in _REQUIRED if not any(s in d for s in _ALIASES.get(name, (name,)))
        ]
        if missing:
            raise ConfigError(
                f"{source}: not a BLOOM config.json: missing {', '.join(missing)} (expected the sizes vocab_size, "
                f"hidden_size, n_layer, n_head, as transformers writes them)"
            )
        d = dict(d)
        model_type = d.pop("model_type", "bloom")
        if not isinstance(model_type, str):
            raise ConfigError(
                f"{source}: model_type must be the string 'bloom', found {model_type!r}"
            )
        if model_type != "bloom":
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected 'bloom'")
        kwargs = {}
        for name, spellings in _ALIASES.items():
            found = [s for s in spellings if s in d]
            values = [d.pop(s) for s in found]
            if any(
                v != values[0] for v in values
            ):  # a list, not a set: values may be unhashable junk
                raise ConfigError(f"{source}: conflicting values for {' / '.join(found)}: {values}")
            if values:
                kwargs[name] = values[0]
        if d.get("n_inner") is not None:
            kwargs["intermediate_size"] = d.pop("n_inner")
        own = {f.name for f in fields(cls)} - {"extra", "intermediate_size"} - set(_ALIASES)
        for name in own:
            if name in d:
                kwargs[name] = d.pop(name)
        # dropout spelt the keras way
        if "dropout" in d and "hidden_dropout" not in kwargs:
            kwargs["hidden_dropout"] = kwargs["attention_dropout"] = d.pop("dropout")
        d.pop("architectures", None)
        # Build without __post_init__ so that validation errors can name `source`.
        cfg = cls.__new__(cls)
        cfg.__dict__.update(
            {f.name: f.default for f in fields(cls) if f.name != "extra"}, extra=d, **kwargs
        )
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict:
        """An HF `config.json` dict that transformers' BloomConfig reads back to the same model."""
        d = dict(self.extra)
        d.update(
            architectures=["BloomForCausalLM"],
            model_type="bloom",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            layer_norm_epsilon=self.layer_norm_epsilon,
            initializer_range=self.initializer_range,
            apply_residual_connection_post_layernorm=self.apply_residual_connection_post_layernorm,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            unk_token_id=self.unk_token_id,
        )
        if self.intermediate_size is not None and self.intermediate_size != 4 * self.hidden_size:
            d["n_inner"] = self.intermediate_size  # not honoured by transformers (always 4h)
        return d

    @classmethod
    def from_json_file(cls, path) -> "BloomConfig":
        return cls.from_dict(read_json_file(path, ConfigError, "config"), source=str(path))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    # -- keras-hub names -------------------------------------------------------------------------

    @classmethod
    def from_keras_kwargs(
        cls,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim=None,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ) -> "BloomConfig":
        """keras-hub's BloomBackbone argument names -> BloomConfig."""
        return cls(
            vocab_size=vocabulary_size,
            n_layer=num_layers,
            n_head=num_heads,
            hidden_size=hidden_dim,
            intermediate_size=None
            if intermediate_dim in (None, 4 * hidden_dim)
            else intermediate_dim,
            hidden_dropout=dropout,
            attention_dropout=dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            **kwargs,
        )


# ------------------------------------------------------------------------------------------------
# the parameters a config describes
# ------------------------------------------------------------------------------------------------

# Sub-keys of one block, h.{i}.<sub>, in forward order.
BLOCK_KEYS = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "self_attention.query_key_value.weight",
    "self_attention.query_key_value.bias",
    "self_attention.dense.weight",
    "self_attention.dense.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
)


def param_shapes(config):
    """{HF name without `transformer.`: shape} for every parameter of `config`, in model order
    (the names of docs/ARCHITECTURE.md; checkpoint loaders and model.py both use them)."""
    C, F, V = config.hidden_size, config.ffn_size, config.vocab_size
    shapes = {
        "word_embeddings.weight": (V, C),
        "word_embeddings_layernorm.weight": (C,),
        "word_embeddings_layernorm.bias": (C,),
    }
    block = {
        "input_layernorm.weight": (C,),
        "input_layernorm.bias": (C,),
        "self_attention.query_key_value.weight": (3 * C, C),
        "self_attention.query_key_value.bias": (3 * C,),
        "self_attention.dense.weight": (C, C),
        "self_attention.dense.bias": (C,),
        "post_attention_layernorm.weight": (C,),
        "post_attention_layernorm.bias": (C,),
        "mlp.dense_h_to_4h.weight": (F, C),
        "mlp.dense_h_to_4h.bias": (F,),
        "mlp.dense_4h_to_h.weight": (C, F),
        "mlp.dense_4h_to_h.bias": (C,),
    }
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{k}": block[k] for k in BLOCK_KEYS})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


# ------------------------------------------------------------------------------------------------
# generation_config.json: the ids generation needs
# ------------------------------------------------------------------------------------------------

GENERATION_CONFIG_FILE = "generation_config.json"


def _token_id(value, name: str, vocab_size: int, source: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ConfigError(
            f"{source}: `{name}` must be a token id in [0, {vocab_size}) or null, found {value!r:.80}"
        )
    return value


@dataclass
class GenerationConfig:
    """The token ids of HF `generation_config.json` that `generate` uses.

    eos_token_id: the stop ids (HF allows one id or a list), as a tuple, possibly empty.
    pad_token_id: what finished rows are filled with; None means "the first stop id" (HF's fallback).
    extra: every other key (sampling defaults, transformers_version, ...), kept for the round trip.
    """

    eos_token_id: tuple = ()
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls, d: dict, vocab_size: int, source: str = "generation_config.json"
    ) -> "GenerationConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
        d = dict(d)
        eos = d.pop("eos_token_id", None)
        eos = [] if eos is None else (eos if isinstance(eos, list) else [eos])
        eos = tuple(_token_id(i, "eos_token_id", vocab_size, source) for i in eos)
        pad = _token_id(d.pop("pad_token_id", None), "pad_token_id", vocab_size, source)
        bos = _token_id(d.pop("bos_token_id", None), "bos_token_id", vocab_size, source)
        return cls(eos_token_id=eos, pad_token_id=pad, bos_token_id=bos, extra=d)

    @classmethod
    def from_config(cls, config: BloomConfig) -> "GenerationConfig":
        """What transformers derives from config.json when a model has no generation_config.json."""
        eos = () if config.eos_token_id is None else (config.eos_token_id,)
        return cls(
            eos_token_id=eos, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id
        )

    @classmethod
    def from_model_dir(cls, directory, config: BloomConfig) -> "GenerationConfig":
        """generation_config.json of a model directory if it has one, else the ids of its config."""
        path = Path(directory) / GENERATION_CONFIG_FILE
        if not path.exists():
            return cls.from_config(config)
        return cls.from_dict(
            read_json_file(path, ConfigError, "generation config"), config.vocab_size, str(path)
        )

    def to_dict(self) -> dict:
        d = dict(self.extra)
        eos = list(self.eos_token_id)
        d.update(
            bos_token_id=self.bos_token_id,
            eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
            pad_token_id=self.pad_token_id,
        )
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
