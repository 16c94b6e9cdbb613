"""minibloom: BLOOM, the causal language model, re-implemented from scratch in NumPy (+ numba).

The public names below are the ones other code and outside checks rely on; see README.md for a
tour and docs/ARCHITECTURE.md for the module contract.
"""

__version__ = "0.1.0"  # the one source: setup.cfg reads it (version = attr: minibloom.__version__)

from minibloom import models  # keras-hub's names: minibloom.models.BloomCausalLM, ...
from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import CheckpointError, ConfigError, MinibloomError, PresetNotFoundError
from minibloom.io.checkpoint import load_params, read_checkpoint, save_params
from minibloom.io.presets import PRESETS, Preset, default_model_dir, list_presets
from minibloom.io.presets import resolve as resolve_preset
from minibloom.kvcache import KVCache
from minibloom.model import BloomBackbone
from minibloom.optim import (
    BIAS_AND_NORM,
    Adam,
    AdamW,
    ConstantSchedule,
    GradientAccumulator,
    WarmupCosineSchedule,
    WarmupLinearSchedule,
    clip_grad_norm,
    get_schedule,
)
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
)
from minibloom.tokenizer import BloomTokenizer
from minibloom.training.bpe_train import train_tokenizer
from minibloom.training.data import TokenWindows
from minibloom.training.train import ArrayDataset, Trainer

__all__ = [
    "__version__",
    "BIAS_AND_NORM",
    "PRESETS",
    "Adam",
    "AdamW",
    "ArrayDataset",
    "BeamSampler",
    "BloomBackbone",
    "BloomCausalLM",
    "BloomCausalLMPreprocessor",
    "BloomConfig",
    "BloomTokenizer",
    "CheckpointError",
    "ConfigError",
    "ConstantSchedule",
    "ContrastiveSampler",
    "GradientAccumulator",
    "GreedySampler",
    "KVCache",
    "MinibloomError",
    "Preset",
    "PresetNotFoundError",
    "RandomSampler",
    "Sampler",
    "TokenWindows",
    "TopKSampler",
    "TopPSampler",
    "Trainer",
    "WarmupCosineSchedule",
    "WarmupLinearSchedule",
    "clip_grad_norm",
    "default_model_dir",
    "get_schedule",
    "list_presets",
    "load_params",
    "models",
    "read_checkpoint",
    "resolve_preset",
    "save_params",
    "train_tokenizer",
]
