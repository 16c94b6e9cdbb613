"""A model directory saved by transformers 5 without tokenizer.json generates as HF does (issue 10, finding 5).

Its config.json has `"pad_token_id": null` and generation_config.json lists the stop ids
(`eos_token_id: [2, X]`). HF stops at any of them and fills finished rows with the first one
when there is no pad id. Golden files: `python tools/make_golden.py hfdirs` (transformers).
"""

import json

import numpy as np
import pytest
from conftest import golden_path

from minibloom.causal_lm import BloomCausalLM


def _cases():
    return json.loads(golden_path("hf5_cases.json").read_text())


def test_the_directory_loads_with_its_generation_config():
    lm = BloomCausalLM.from_preset(golden_path("hf5_no_tokenizer"))
    assert lm.preprocessor is None and lm.backbone.config.pad_token_id is None
    assert lm.generation_config.eos_token_id == tuple(_cases()["eos_token_id"])
    assert lm.generation_config.pad_token_id is None


@pytest.mark.parametrize("case", range(3))
def test_greedy_ids_equal_transformers_with_the_saved_stop_ids(case):
    c = _cases()["cases"][case]
    lm = BloomCausalLM.from_preset(golden_path("hf5_no_tokenizer"))
    out = lm.generate(
        {"token_ids": np.array(c["token_ids"]), "padding_mask": np.array(c["padding_mask"], bool)},
        max_length=c["max_length"],
    )
    np.testing.assert_array_equal(out["token_ids"], np.array(c["sequences"]))


def test_the_generation_config_survives_a_save(tmp_path):
    lm = BloomCausalLM.from_preset(golden_path("hf5_no_tokenizer"))
    lm.save_to_preset(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == _cases()["eos_token_id"] and saved["pad_token_id"] is None
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pad_token_id"] is None
    again = BloomCausalLM.from_preset(tmp_path / "m")
    assert again.generation_config == lm.generation_config


@pytest.mark.parametrize(
    "text, expect",
    [
        ('{"eos_token_id": "2"}', "eos_token_id"),
        ('{"eos_token_id": [2, 99999]}', "eos_token_id"),
        ('{"pad_token_id": -1}', "pad_token_id"),
        ("[1, 2]", "expected a JSON object"),
        ("{oops", "invalid JSON"),
    ],
)
def test_a_bad_generation_config_is_named(tmp_path, text, expect):
    import shutil

    from minibloom.errors import ConfigError

    shutil.copytree(golden_path("hf5_no_tokenizer"), tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(text)
    with pytest.raises(
        ConfigError, match=f"generation_config.json.*{expect}|{expect}.*generation_config.json"
    ):
        BloomCausalLM.from_preset(tmp_path / "m")
