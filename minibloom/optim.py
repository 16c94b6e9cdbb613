"""AdamW, keras' Adam, learning-rate schedules, global-norm gradient clipping and gradient accumulation.

Everything here works on flat parameter dicts (`{name: float32 array}`, the keys of
`BloomCausalLM.params`); gradients and the optimizer moments are dicts with the same keys.
The numbers follow PyTorch, the golden reference:

- `AdamW.apply` equals `torch.optim.AdamW(..., foreach=False)` step for step (bias correction,
  eps added outside the square root, decoupled weight decay `p *= 1 - lr * wd` applied before the
  moment update). `adamw_update` below is that arithmetic on whole arrays; its fast twin, one
  fused numba loop (`minibloom/kernels/adamw.py`, the same statements per element), is chosen
  by `minibloom.dispatch.fast_or_reference`.
- `Adam.apply` equals `keras.optimizers.Adam` step for step (keras-hub's default optimizer,
  `Adam(2e-5)`): epsilon (default 1e-7) is added to the square root of the UN-corrected second
  moment and the bias correction is folded into the step size, alpha = lr sqrt(1 - beta_2^t) /
  (1 - beta_1^t); every scalar is a float32, as keras computes it in the variable's dtype.
  `adam_update` is that arithmetic (reference tier only: no fast twin).
- `clip_grad_norm` equals `torch.nn.utils.clip_grad_norm_` (the norm of all gradients together,
  scale by `max_norm / (norm + 1e-6)` when that is below 1).
- The schedules equal transformers' `get_constant_schedule_with_warmup`,
  `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` (a multiplier on the peak
  learning rate, evaluated at the number of updates already made).

Left out: other optimizers, per-group hyper-parameters beyond "decay or not", AMSGrad, keras
Adam's weight decay and clipping options, mixed precision. The training loop that uses these
pieces is `minibloom/training/train.py`.
"""

import math
from dataclasses import dataclass

import numpy as np

from minibloom.arguments import check_float, check_int
from minibloom.dispatch import fast_or_reference
from minibloom.errors import ArgumentError, TrainingError

# Substrings of the parameter names that are usually kept out of weight decay: every bias and
# every LayerNorm gain (the embedding LayerNorm, each block's two, and ln_f). Pass it as
# `AdamW(..., exclude_from_weight_decay=BIAS_AND_NORM)`.
BIAS_AND_NORM = ("bias", "layernorm", "ln_f")


# ------------------------------------------------------------------------------------------------
# the update of one tensor
# ------------------------------------------------------------------------------------------------


def adamw_update(p, g, m, v, *, decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, step_size):
    """One AdamW step on one tensor, in place on `p`, `m` and `v`, as torch.optim.AdamW rounds it.

    p, g, m, v: float32 arrays of one shape (parameter, gradient, first and second moment); g is
    read only. The scalars are np.float32 (computed once per step by `AdamW.apply`):
    decay = 1 - lr * wd, step_size = lr / (1 - beta_1**t), bc2_sqrt = sqrt(1 - beta_2**t).
    """
    p *= decay  # decoupled weight decay, applied first
    m += one_minus_b1 * (g - m)  # m = m + (1 - beta_1) (g - m): torch's m.lerp_(g, 1 - beta_1)
    v *= b2
    v += one_minus_b2 * g * g  # v = beta_2 v + (1 - beta_2) g^2
    denom = np.sqrt(v) / bc2_sqrt + eps  # eps after the square root and the bias correction
    p -= step_size * m / denom


def adam_update(p, g, m, v, *, one_minus_b1, one_minus_b2, alpha, eps):
    """One keras Adam step on one tensor, in place on `p`, `m` and `v` (keras' `Adam.update_step`).

    p, g, m, v: float32 arrays of one shape. The scalars are np.float32 (computed once per step by
    `Adam.apply`): alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t).
    """
    m += (g - m) * one_minus_b1  # keras: m.assign_add((g - m) * (1 - beta_1))
    v += (g * g - v) * one_minus_b2  # keras: v.assign_add((g^2 - v) * (1 - beta_2))
    p -= (m * alpha) / (np.sqrt(v) + eps)  # eps on the raw sqrt(v): keras' "epsilon hat"


# ------------------------------------------------------------------------------------------------
# learning-rate schedules: callables step -> learning rate, step = updates already made (0 first)
# ------------------------------------------------------------------------------------------------


class _Warmup:
    """What every schedule starts with: a linear warmup from 0 to `learning_rate` over
    `warmup_steps` updates; `after_warmup(step)` gives the rate from then on."""

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * step / max(1, self.warmup_steps)
        return self.after_warmup(step)


@dataclass(frozen=True)
class ConstantSchedule(_Warmup):
    """The same learning rate at every step, after an optional linear warmup from 0."""

    learning_rate: float
    warmup_steps: int = 0

    def after_warmup(self, step: int) -> float:
        return self.learning_rate


@dataclass(frozen=True)
class WarmupLinearSchedule(_Warmup):
    """Linear warmup, then linear decay to 0 at `total_steps` (transformers'
    `get_linear_schedule_with_warmup`)."""

    learning_rate: float
    warmup_steps: int
    total_steps: int

    def after_warmup(self, step: int) -> float:
        remaining = (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps)
        return self.learning_rate * max(0.0, remaining)


@dataclass(frozen=True)
class WarmupCosineSchedule(_Warmup):
    """Linear warmup, then half a cosine down to 0 at `total_steps` (transformers'
    `get_cosine_schedule_with_warmup` with num_cycles=0.5)."""

    learning_rate: float
    warmup_steps: int
    total_steps: int

    def after_warmup(self, step: int) -> float:
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.learning_rate * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def get_schedule(name: str, learning_rate: float, warmup_steps: int = 0, total_steps: int = 0):
    """A schedule by name: "constant", "linear" or "cosine" (the last two need `total_steps`)."""
    learning_rate = check_float("learning_rate", learning_rate, lo=0)
    warmup_steps = check_int("warmup_steps", warmup_steps, lo=0)
    if name == "constant":
        return ConstantSchedule(learning_rate, warmup_steps)
    if name in ("linear", "cosine"):
        if total_steps <= 0:
            raise ArgumentError(f"schedule {name!r} needs total_steps > 0, found {total_steps}")
        cls = WarmupLinearSchedule if name == "linear" else WarmupCosineSchedule
        return cls(learning_rate, warmup_steps, total_steps)
    raise ArgumentError(f"schedule: expected 'constant', 'linear' or 'cosine', found {name!r}")


# ------------------------------------------------------------------------------------------------
# gradient clipping and accumulation
# ------------------------------------------------------------------------------------------------


def global_norm(grads: dict) -> float:
    """sqrt(sum of squares of every gradient entry), as one number (accumulated in float64)."""
    return math.sqrt(
        sum(float(np.dot(g.reshape(-1).astype(np.float64), g.reshape(-1))) for g in grads.values())
    )


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global norm is at most `max_norm`; return the norm
    before clipping. Same rule as `torch.nn.utils.clip_grad_norm_`: coef = max_norm / (norm + 1e-6),
    applied only when coef < 1. A non-finite norm raises TrainingError (nothing is scaled)."""
    norm = global_norm(grads)
    if not math.isfinite(norm):
        raise TrainingError(f"gradient global norm is {norm}: the loss or the gradients overflowed")
    coef = np.float32(max_norm / (norm + 1e-6))
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return norm


class GradientAccumulator:
    """Sums micro-batch gradients into the gradient of the whole batch.

    Each micro-batch gradient is the gradient of a *mean* over its own target tokens (HF's loss),
    so averaging micro-batches equally would over-weight short ones. `add(grads, n_tokens)` keeps
    sum(n_i * grads_i) and `result()` divides by sum(n_i): the gradient of the mean over all target
    tokens of all micro-batches, i.e. what one big batch would give (up to float32 rounding).
    """

    def __init__(self):
        self._sum = None
        self._tokens = 0.0

    def add(self, grads: dict, n_tokens: float) -> None:
        if self._sum is None:
            self._sum = {k: g * np.float32(n_tokens) for k, g in grads.items()}
        else:
            for k, g in grads.items():
                self._sum[k] += g * np.float32(n_tokens)
        self._tokens += float(n_tokens)

    def result(self) -> dict:
        if self._sum is None or self._tokens <= 0:
            raise TrainingError(
                "gradient accumulation: no micro-batch with target tokens was added"
            )
        scale = np.float32(1.0 / self._tokens)
        return {k: s * scale for k, s in self._sum.items()}


# ------------------------------------------------------------------------------------------------
# AdamW and Adam
# ------------------------------------------------------------------------------------------------


class _Moments:
    """What AdamW and Adam share: the learning rate (float or schedule), the step counter, the
    moments `m`, `v` (dicts like params, zeros on the first `apply`) and their checkpointing."""

    def _init_moments(self, learning_rate, beta_1, beta_2, epsilon):
        if not callable(learning_rate):
            learning_rate = check_float("learning_rate", learning_rate, lo=0)
        self.learning_rate = learning_rate
        self.beta_1 = check_float("beta_1", beta_1, lo=0, hi=1, hi_open=True)
        self.beta_2 = check_float("beta_2", beta_2, lo=0, hi=1, hi_open=True)
        self.epsilon = check_float("epsilon", epsilon, lo=0, lo_open=True)
        self.step = 0
        self.m = {}
        self.v = {}

    def current_learning_rate(self) -> float:
        """The learning rate the next `apply` will use."""
        lr = self.learning_rate
        return float(lr(self.step)) if callable(lr) else float(lr)

    def _checked(self, params, grads):
        """The (name, param, contiguous grad) triples of one step, moments created as needed."""
        missing = sorted(set(params) - set(grads))
        if missing:
            raise ArgumentError(
                f"grads: missing gradients for {missing[:5]} ({len(missing)} tensors)"
            )
        out = []
        for name, p in params.items():
            g = grads[name]
            if p.dtype != np.float32 or g.dtype != np.float32 or g.shape != p.shape:
                raise ArgumentError(
                    f"{type(self).__name__}: {name}: expected float32 param and grad of one shape, "
                    f"found {p.dtype}{p.shape} and {g.dtype}{g.shape}"
                )
            if name not in self.m:
                self.m[name] = np.zeros_like(p)
                self.v[name] = np.zeros_like(p)
            out.append((name, p, np.ascontiguousarray(g)))
        return out

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """{"step": int, "m": {name: array}, "v": {name: array}} (arrays are the live state)."""
        return {"step": self.step, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned (arrays are copied to float32)."""
        m, v = state["m"], state["v"]
        if set(m) != set(v):
            raise TrainingError(
                f"optimizer state: first and second moments have different keys: "
                f"{sorted(set(m) ^ set(v))[:5]}"
            )
        self.step = int(state["step"])
        self.m = {k: np.array(a, dtype=np.float32) for k, a in m.items()}
        self.v = {k: np.array(a, dtype=np.float32) for k, a in v.items()}


class AdamW(_Moments):
    """Adam with decoupled weight decay, numerically `torch.optim.AdamW`.

    Args:
        learning_rate: a float, or a schedule (any callable step -> float, e.g. WarmupCosineSchedule).
        beta_1, beta_2: decay rates of the first and second moment averages.
        epsilon: added to sqrt(v_hat), outside the square root (torch's `eps`).
        weight_decay: decoupled decay: each step multiplies a parameter by (1 - lr * weight_decay)
            before the Adam update. torch's AdamW default is 0.01, as here.
        exclude_from_weight_decay: substrings of parameter names that get no decay, e.g.
            `BIAS_AND_NORM` for biases and LayerNorm weights (torch expresses this with two
            parameter groups). Default: decay every parameter, as torch does with one group.
        global_clipnorm: if set, `apply` first clips the gradients' global norm to this value
            (`clip_grad_norm`, in place on `grads`).

    State: `step` (updates made) and the moments `m`, `v` (dicts like params, created as zeros on
    the first `apply`). `state_dict()` / `load_state_dict()` round-trip it for checkpoints.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=0.01,
        exclude_from_weight_decay=(),
        global_clipnorm=None,
    ):
        self._init_moments(learning_rate, beta_1, beta_2, epsilon)
        self.weight_decay = check_float("weight_decay", weight_decay, lo=0)
        if global_clipnorm is not None:
            global_clipnorm = check_float("global_clipnorm", global_clipnorm, lo=0, lo_open=True)
        self.exclude_from_weight_decay = tuple(exclude_from_weight_decay)
        self.global_clipnorm = global_clipnorm

    def decays(self, name: str) -> bool:
        """Whether parameter `name` gets weight decay."""
        return not any(s in name for s in self.exclude_from_weight_decay)

    def apply(self, params: dict, grads: dict) -> float:
        """One update of every parameter in `params` (in place) from `grads`; returns the learning
        rate used. If `global_clipnorm` is set, `grads` are clipped in place first."""
        if self.global_clipnorm is not None and set(params) <= set(grads):  # else _checked raises
            clip_grad_norm({k: grads[k] for k in params}, self.global_clipnorm)
        triples = self._checked(params, grads)
        lr = self.current_learning_rate()
        self.step += 1
        t = self.step
        # Per-step scalars, computed in float64 like torch's Python floats, rounded to float32 once.
        step_size = lr / (1.0 - self.beta_1**t)
        bc2_sqrt = (1.0 - self.beta_2**t) ** 0.5
        update = fast_or_reference(adamw_update)
        f32 = np.float32
        for name, p, g in triples:
            wd = self.weight_decay if self.decays(name) else 0.0
            update(
                p,
                g,
                self.m[name],
                self.v[name],
                decay=f32(1.0 - lr * wd),
                one_minus_b1=f32(1.0 - self.beta_1),
                b2=f32(self.beta_2),
                one_minus_b2=f32(1.0 - self.beta_2),
                bc2_sqrt=f32(bc2_sqrt),
                eps=f32(self.epsilon),
                step_size=f32(step_size),
            )
        return lr


class Adam(_Moments):
    """Adam as keras defines it (`keras.optimizers.Adam`), step for step.

    `BloomCausalLM.compile(optimizer="auto")` uses `Adam(2e-5)`, keras-hub's default. It differs
    from torch's Adam (= `AdamW(weight_decay=0)`) in where epsilon goes: keras adds it to
    sqrt(v) before the bias correction, torch to sqrt(v_hat) after it (the same update only if
    eps_torch = eps / sqrt(1 - beta_2**t)), and keras' default epsilon is 1e-7, torch's 1e-8.

    Args:
        learning_rate: a float, or a schedule (callable step -> float).
        beta_1, beta_2, epsilon: keras' names and defaults (0.9, 0.999, 1e-7).

    State and checkpoints as `AdamW` (`step`, `m`, `v`, `state_dict`, `load_state_dict`).
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self._init_moments(learning_rate, beta_1, beta_2, epsilon)

    def apply(self, params: dict, grads: dict) -> float:
        """One update of every parameter in `params` (in place) from `grads`; returns the learning
        rate used."""
        triples = self._checked(params, grads)
        lr = self.current_learning_rate()
        self.step += 1
        f32 = np.float32
        # keras casts everything to the variable's dtype first: float32 scalars throughout
        t = f32(self.step)
        alpha = f32(lr) * np.sqrt(f32(1) - f32(self.beta_2) ** t) / (f32(1) - f32(self.beta_1) ** t)
        for name, p, g in triples:
            adam_update(
                p,
                g,
                self.m[name],
                self.v[name],
                one_minus_b1=f32(1 - self.beta_1),
                one_minus_b2=f32(1 - self.beta_2),
                alpha=f32(alpha),
                eps=f32(self.epsilon),
            )
        return lr
