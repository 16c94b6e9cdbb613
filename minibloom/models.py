"""keras-hub's `keras_hub.models` names, so its examples run with `keras_hub` replaced by
`minibloom`: `minibloom.models.BloomCausalLM.from_preset("bloom_560m_multi")` and so on.
(The transformer itself is minibloom/model.py.)"""

from minibloom.causal_lm import BloomCausalLM
from minibloom.model import BloomBackbone
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.tokenizer import BloomTokenizer

__all__ = ["BloomBackbone", "BloomCausalLM", "BloomCausalLMPreprocessor", "BloomTokenizer"]
