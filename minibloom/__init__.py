"""minibloom: BLOOM, the causal language model, re-implemented from scratch in NumPy (+ numba).

The public names below are the ones other code and outside checks rely on; see README.md for a
tour and docs/ARCHITECTURE.md for the module contract.
"""

__version__ = "0.1.0"  # the one source: setup.cfg reads it (version = attr: minibloom.__version__)

import os

# OpenBLAS's idle threads spin for 2**28 cycles (~0.1 s) after every threaded call, taking a core
# from the fast tier's own threads (kernels/gemm.py's chunk workers, numba) that run right after:
# measured on bloom-560m, a 128-token prefill took 0.78 s spinning and 0.46 s with a timeout of
# 2**4 cycles. OpenBLAS reads this once, when NumPy loads it, so it takes effect when minibloom
# is imported before NumPy (the CLI always is); a value already set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

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
