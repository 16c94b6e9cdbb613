"""minibloom: BLOOM, the causal language model, re-implemented from scratch in NumPy (+ numba).

The public names below are the ones other code and outside checks rely on; see README.md for a
tour and docs/ARCHITECTURE.md for the module contract.
"""

from minibloom.causal_lm import BloomCausalLM
from minibloom.config import BloomConfig
from minibloom.errors import MinibloomError
from minibloom.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
)
from minibloom.kvcache import KVCache
from minibloom.model import BloomBackbone
from minibloom.tokenizer import BloomTokenizer
from minibloom.bpe_train import train_tokenizer
from minibloom.optim import (
    BIAS_AND_NORM,
    AdamW,
    ConstantSchedule,
    GradientAccumulator,
    WarmupCosineSchedule,
    WarmupLinearSchedule,
    clip_grad_norm,
    get_schedule,
)
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.data import TokenWindows
from minibloom.train import ArrayDataset, Trainer
from minibloom.checkpoint import load_params, read_checkpoint, save_params
from minibloom.presets import PRESETS, Preset, default_model_dir, list_presets, resolve as resolve_preset
from minibloom.errors import CheckpointError, ConfigError, PresetNotFoundError
