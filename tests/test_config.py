"""config.py: BloomConfig <-> HF config.json, every key spelling, clear errors for nonsense."""

import json

import pytest
from conftest import GOLDEN, requires_transformers

from minibloom.config import BloomConfig
from minibloom.errors import ConfigError

# bigscience/bloom (176B) spells the sizes the old Megatron way; bloom-560m the newer way.
CONFIG_176B_STYLE = {
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_dropout": 0.0,
    "initializer_range": 0.0048,
    "layer_norm_epsilon": 1e-05,
    "masked_softmax_fusion": True,
    "model_type": "bloom",
    "n_embed": 14336,
    "n_layer": 70,
    "num_attention_heads": 112,
    "pad_token_id": 3,
    "pretraining_tp": 4,
    "slow_but_exact": False,
    "unk_token_id": 0,
    "use_cache": True,
    "vocab_size": 250880,
}


def test_every_spelling():
    cfg = BloomConfig.from_dict(CONFIG_176B_STYLE)
    assert (cfg.hidden_size, cfg.n_layer, cfg.n_head, cfg.head_dim) == (14336, 70, 112, 128)
    assert cfg.extra["pretraining_tp"] == 4 and cfg.extra["masked_softmax_fusion"] is True
    alt = BloomConfig.from_dict(
        {"hidden_size": 64, "num_hidden_layers": 3, "n_head": 4, "vocab_size": 100}
    )
    assert (alt.hidden_size, alt.n_layer, alt.n_head) == (64, 3, 4)


def test_round_trip_keeps_unknown_keys():
    cfg = BloomConfig.from_dict(CONFIG_176B_STYLE)
    d = cfg.to_dict()
    assert d["hidden_size"] == 14336 and "n_embed" not in d
    assert d["pretraining_tp"] == 4 and d["attention_softmax_in_fp32"] is True
    again = BloomConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again == cfg


def test_parameter_count_of_bloom_560m():
    cfg = BloomConfig(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)
    assert cfg.num_parameters() == 559_214_592


def test_golden_configs_load():
    # written by transformers 5 (pad_token_id null, "dtype", "architectures": BloomModel)
    for name in ("h6_prefix", "post_ln_bare", "bf16"):
        cfg = BloomConfig.from_json_file(GOLDEN / "model" / name / "config.json")
        assert cfg.vocab_size == 300 and cfg.hidden_size == 48
    assert BloomConfig.from_json_file(
        GOLDEN / "model" / "post_ln_bare" / "config.json"
    ).apply_residual_connection_post_layernorm
    assert BloomConfig.from_json_file(GOLDEN / "model" / "h6_prefix" / "config.json").n_head == 6


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": 50, "n_head": 8}, "not divisible by n_head 8"),
        ({"n_layer": 0}, "`n_layer` must be a positive integer, found 0"),
        ({"vocab_size": "big"}, "`vocab_size` must be a positive integer"),
        ({"layer_norm_epsilon": -1.0}, "`layer_norm_epsilon`"),
        ({"hidden_dropout": 1.5}, "`hidden_dropout` must be in \\[0, 1\\)"),
        ({"eos_token_id": 10**9}, "`eos_token_id` must be a token id"),
        ({"model_type": "gpt2"}, "model_type is 'gpt2'"),
        ({"n_embed": 32, "hidden_size": 64}, "conflicting values for hidden_size / n_embed"),
    ],
)
def test_nonsense_rejected_with_the_key_named(change, message):
    d = {"vocab_size": 100, "hidden_size": 64, "n_layer": 2, "n_head": 8, **change}
    with pytest.raises(ConfigError, match=message):
        BloomConfig.from_dict(d, source="my/config.json")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        BloomConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON"):
        BloomConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(
        '{"n_layer": -2, "n_head": 2, "hidden_size": 8, "vocab_size": 10}'
    )
    with pytest.raises(ConfigError, match=r"config.json: `n_layer`"):
        BloomConfig.from_json_file(tmp_path / "config.json")


@pytest.mark.parametrize(
    "d, expect",
    [
        ({"n_head": 5, "hidden_size": 12}, "missing vocab_size, n_layer"),
        ({}, "missing vocab_size, hidden_size, n_layer, n_head"),
        ({"model_type": "bloom"}, "missing vocab_size"),
        # a keras-hub preset's config.json: never read as a default-sized HF model
        (
            {
                "module": "keras_hub.src.models.bloom.bloom_backbone",
                "class_name": "BloomBackbone",
                "config": {
                    "vocabulary_size": 100,
                    "num_layers": 2,
                    "num_heads": 2,
                    "hidden_dim": 8,
                },
            },
            "a keras config",
        ),
    ],
)
def test_configs_without_blooms_sizes_are_refused(d, expect):
    with pytest.raises(ConfigError, match=expect):
        BloomConfig.from_dict(d, source="x/config.json")


def test_keras_names():
    cfg = BloomConfig.from_keras_kwargs(
        vocabulary_size=10,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=32,
        dropout=0.1,
    )
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.hidden_size, cfg.ffn_size) == (
        10,
        2,
        2,
        8,
        32,
    )
    assert cfg.intermediate_size is None and cfg.hidden_dropout == cfg.attention_dropout == 0.1


@requires_transformers
def test_transformers_reads_what_we_write(tmp_path):
    import transformers

    cfg = BloomConfig.from_dict(CONFIG_176B_STYLE)
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    theirs = transformers.BloomConfig.from_pretrained(tmp_path)
    assert (theirs.hidden_size, theirs.n_layer, theirs.n_head, theirs.pretraining_tp) == (
        14336,
        70,
        112,
        4,
    )
    back = BloomConfig.from_dict(theirs.to_dict())
    assert (back.hidden_size, back.n_layer, back.n_head) == (14336, 70, 112)
