"""The training loop behind `BloomCausalLM.fit` / `evaluate` and `python -m minibloom train`.

One optimizer step:

    for each of `accumulate_steps` micro-batches (x, y, w):
        loss_i, grads_i = lm.loss_and_grads(x, y, w)            (model.py, losses.py)
        accumulate grads_i weighted by its target count          (optim.GradientAccumulator)
    stop with TrainingError if the loss or the gradient norm is not finite
    optimizer.apply(params, grads)                               (optim.AdamW: clip, schedule, update)

`Trainer` owns everything a run needs to continue where it stopped, and `save_checkpoint` writes
all of it, so a resumed run reaches bit-identical parameters to an uninterrupted one:

    checkpoints/step-00000040/model.safetensors       model parameters (float32, HF names)
                             /config.json             the model config (to rebuild it on resume)
                             /tokenizer.json          the run's tokenizer (when the model has one)
                             /generation_config.json  (when the model has one)
                             /optimizer.safetensors   AdamW moments m.<name>, v.<name>
                             /state.json              step, epoch, batch position, dropout RNG,
                                                      running epoch loss, history, data settings
    checkpoints/LATEST                                name of the newest complete checkpoint

So a checkpoint directory is also a model directory, as HF Trainer's `checkpoint-N` is:
`BloomCausalLM.from_preset("OUT/checkpoints/step-00000040")` and `generate --preset` load it
(checkpoint_files picks model.safetensors; optimizer.safetensors beside it is not a shard).
Checkpoints written before this layout hold `params.safetensors` and no tokenizer.json;
`load_checkpoint` still reads them. A resumed run uses exactly the checkpoint's config and
tokenizer: `load_checkpoint` refuses a model whose config or tokenizer differs.

A checkpoint directory is written under a temporary name, flushed to disk and renamed when
complete; LATEST is replaced atomically afterwards; only then are older checkpoints removed. A
crash at any moment (SIGKILL, power cut) leaves LATEST pointing at a complete checkpoint, see
`Trainer.save_checkpoint` and docs/RELIABILITY.md. Ctrl-C during `run` finishes the current step,
saves, and raises KeyboardInterrupt (a second Ctrl-C interrupts at once). A non-finite loss or
gradient stops the run with TrainingError before the parameters are touched, naming the last
good checkpoint.

Data: anything with `batches(batch_size, shuffle, seed, epoch, start_batch)` and
`num_batches(batch_size)`: `ArrayDataset` (in-memory arrays, e.g. preprocessed strings) or
`minibloom.training.data.TokenWindows` (a streamed corpus). The order of every epoch depends only on
(seed, epoch), which is what makes the data position resumable.

Left out: multiple processes, mixed precision, early stopping, learning-rate finders.
"""

import io
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from minibloom.arguments import check_choice, check_float, check_int, check_output_dir
from minibloom.errors import ArgumentError, MinibloomError, TrainingError, describe_error
from minibloom.io.files import read_json_file
from minibloom.optim import GradientAccumulator, global_norm

STATE_FORMAT = "minibloom-train-state"
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


class ArrayDataset:
    """In-memory (x, y, sample_weight) arrays batched by rows; the last batch may be short.

    x: {"token_ids": (N, T) int, "padding_mask": (N, T) bool}, y: (N, T) int,
    sample_weight: (N, T) float32 (None = the padding mask).
    """

    def __init__(self, x, y, sample_weight=None):
        ids = np.asarray(x["token_ids"])
        if ids.ndim != 2:
            raise ArgumentError(f"x['token_ids']: expected (N, T), found shape {ids.shape}")
        mask = np.asarray(x.get("padding_mask", np.ones(ids.shape, bool)))
        y = np.asarray(y)
        if y.shape != ids.shape or mask.shape != ids.shape:
            raise ArgumentError(
                f"y and x['padding_mask']: expected shape {ids.shape}, found {y.shape} and {mask.shape}"
            )
        w = mask if sample_weight is None else np.asarray(sample_weight)
        if w.shape != ids.shape:
            raise ArgumentError(f"sample_weight: expected shape {ids.shape}, found {w.shape}")
        self.token_ids = ids.astype(np.int64, copy=False)
        self.padding_mask = mask.astype(bool, copy=False)
        self.y = y.astype(np.int64, copy=False)
        self.sample_weight = w.astype(np.float32, copy=False)

    def __len__(self):
        return len(self.token_ids)

    def num_batches(self, batch_size, drop_last=False):
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(self, batch_size, shuffle=True, seed=0, epoch=0, start_batch=0, drop_last=False):
        order = (
            np.random.default_rng([int(seed), int(epoch)]).permutation(len(self))
            if shuffle
            else np.arange(len(self))
        )
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):
            rows = order[b * batch_size : (b + 1) * batch_size]
            x = {"token_ids": self.token_ids[rows], "padding_mask": self.padding_mask[rows]}
            yield x, self.y[rows], self.sample_weight[rows]


def as_dataset(lm, x, y=None, sample_weight=None):
    """Whatever `fit` / `evaluate` accept -> a dataset with `batches(...)`.

    Raw strings (need `lm.preprocessor`), a (x, y[, sample_weight]) tuple, a token dict with `y`,
    or an object that already has `batches` (ArrayDataset, TokenWindows).
    """
    if hasattr(x, "batches"):
        return x
    if isinstance(x, tuple):
        return as_dataset(lm, *x)
    if isinstance(x, (str, list)):
        if lm.preprocessor is None:
            raise ArgumentError(
                "x: raw strings need a preprocessor; pass {'token_ids', 'padding_mask'} and y instead"
            )
        if y is not None or sample_weight is not None:
            raise ArgumentError(
                "y / sample_weight: with raw strings the preprocessor makes them; pass only x"
            )
        return ArrayDataset(*lm.preprocessor(x))
    if isinstance(x, dict):
        if y is None:
            raise ArgumentError("y: token dicts need their targets y (B, T), already shifted")
        return ArrayDataset(x, y, sample_weight)
    raise ArgumentError(f"x: expected strings, a token dict or a dataset, found {type(x).__name__}")


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def evaluate(lm, data, batch_size=8, reduction="mean"):
    """{"loss", "accuracy", "perplexity", "tokens"} over a whole dataset.

    loss: sum(w * ce) / sum(w) over every target of every batch ("mean"), or / (rows * T) with
    "sum_over_batch_size"; accuracy: weighted share of targets where argmax(logits) == y;
    perplexity: exp of the per-token mean loss (whatever the reduction).
    """
    from minibloom import losses

    total_wce = total_w = total_hits = total_positions = 0.0
    for x, y, w in data.batches(batch_size, shuffle=False, drop_last=False):
        logits = lm.predict(x)  # (B, T, V)
        wce, _ = losses.softmax_cross_entropy_forward(logits, y, w, reduction="sum")
        w = np.where(y == losses.IGNORE_INDEX, 0.0, w)
        total_wce += wce
        total_w += float(w.sum(dtype=np.float64))
        total_hits += float((w * (logits.argmax(-1) == y)).sum(dtype=np.float64))
        total_positions += y.size
    if total_w == 0:
        raise ArgumentError("evaluate: the data has no target with a non-zero weight")
    token_mean = total_wce / total_w
    loss = token_mean if reduction == "mean" else total_wce / total_positions
    return {
        "loss": loss,
        "accuracy": total_hits / total_w,
        "perplexity": math.exp(min(token_mean, 700.0)),
        "tokens": total_w,
    }


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------


class Trainer:
    """Runs optimizer steps over a dataset and checkpoints everything needed to resume.

    Args:
        lm: a BloomCausalLM (its params are updated in place).
        optimizer: a `minibloom.optim.AdamW`.
        data: a dataset (see the module docstring).
        batch_size, shuffle, seed: how batches are drawn; the seed also seeds dropout.
        reduction: "mean" (HF) or "sum_over_batch_size" (keras), see losses.py.
        accumulate_steps: micro-batches per optimizer step (gradient accumulation).
        checkpoint_dir: where `save_checkpoint` writes (None: no checkpoints).
        save_every: save every this many optimizer steps during `run` (None: only at the end
            and on Ctrl-C).
        keep_checkpoints: how many recent checkpoints to keep.
    """

    def __init__(
        self,
        lm,
        optimizer,
        data,
        batch_size=8,
        shuffle=True,
        seed=0,
        reduction="mean",
        accumulate_steps=1,
        checkpoint_dir=None,
        save_every=None,
        keep_checkpoints=2,
    ):
        batch_size = check_int("batch_size", batch_size, lo=1)
        accumulate_steps = check_int("accumulate_steps", accumulate_steps, lo=1)
        seed = check_int("seed", seed, lo=0)
        save_every = None if save_every is None else check_int("save_every", save_every, lo=0)
        keep_checkpoints = check_int("keep_checkpoints", keep_checkpoints, lo=1)
        check_choice("reduction", reduction, ("mean", "sum_over_batch_size"))
        if data.num_batches(batch_size) == 0:
            raise ArgumentError(
                f"data: not a single batch of {batch_size} examples; lower batch_size or add data"
            )
        self.lm, self.optimizer, self.data = lm, optimizer, data
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.reduction, self.accumulate_steps = reduction, int(accumulate_steps)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.save_every, self.keep_checkpoints = save_every, keep_checkpoints
        # The resumable position: epochs finished, next batch of the current epoch, dropout RNG.
        self.epoch = 0
        self.batch = 0
        # Dropout masks. The data order uses default_rng([seed, epoch]); the spawn key keeps this
        # stream independent of those.
        self.rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1,)))
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0
        self.history = {"loss": [], "step": [], "step_loss": [], "learning_rate": []}
        self.last_checkpoint = None
        self._stop_requested = False

    @property
    def step(self):
        """Optimizer steps made so far (the optimizer's own counter, saved with it)."""
        return self.optimizer.step

    @property
    def batches_per_epoch(self):
        return self.data.num_batches(self.batch_size)

    # --- one step -------------------------------------------------------------------------------

    def train_step(self, micro_batches):
        """One optimizer step over a list of (x, y, w) micro-batches; returns (loss, grad_norm, lr).

        Raises TrainingError, before the parameters change, if the loss or gradients are not finite.
        """
        acc = GradientAccumulator()
        loss_sum = weight_sum = 0.0
        for x, y, w in micro_batches:
            # A diverging run overflows somewhere inside; numpy's warnings would bury the one-line
            # TrainingError below, which reports the same thing with the step and the checkpoint.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                loss, grads = self.lm.loss_and_grads(
                    x, y, w, reduction=self.reduction, rng=self.rng
                )
            n = (
                float(np.sum(w, dtype=np.float64))
                if self.reduction == "mean"
                else float(np.size(y))
            )
            acc.add(grads, n)
            loss_sum += loss * n
            weight_sum += n
        loss = loss_sum / weight_sum if weight_sum else float("nan")
        grads = acc.result() if len(micro_batches) > 1 else grads
        norm = global_norm(grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            where = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint
                else "no checkpoint was saved in this run"
            )
            raise TrainingError(
                f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
                f"(loss {loss}, gradient norm {norm}) at step {self.step + 1} (epoch {self.epoch + 1}, "
                f"batch {self.batch}); parameters were not updated; {where}. Try a lower learning rate "
                f"or gradient clipping."
            )
        lr = self.optimizer.apply(self.lm.params, grads)
        return loss, norm, lr

    # --- the loop -------------------------------------------------------------------------------

    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True

    def run(self, epochs=None, max_steps=None, on_step=None):
        """Train until `epochs` epochs are complete or `max_steps` optimizer steps are made
        (counted from the start of the run, resumed or not; give one of them or both).

        on_step(trainer, loss, grad_norm, lr) is called after every step (progress bars,
        periodic evaluation). Returns `history`.
        """
        if epochs is None and max_steps is None:
            raise ArgumentError("run: give epochs or max_steps")
        epochs = None if epochs is None else check_int("epochs", epochs, lo=1)
        max_steps = None if max_steps is None else check_int("max_steps", max_steps, lo=1)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main else None
        self._stop_requested = False
        try:
            self._loop(epochs, max_steps, on_step)
            if self._stop_requested:
                if self.checkpoint_dir is None:
                    raise KeyboardInterrupt(
                        f"interrupted at step {self.step} (no checkpoint_dir: nothing saved)"
                    )
                saved = (
                    self.last_checkpoint == self._checkpoint_name()
                )  # e.g. by save_every just now
                path = (
                    self.checkpoint_dir / self.last_checkpoint if saved else self.save_checkpoint()
                )
                raise KeyboardInterrupt(
                    f"interrupted at step {self.step}; checkpoint saved to {path}"
                )
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if self.checkpoint_dir is not None and self.last_checkpoint != self._checkpoint_name():
            self.save_checkpoint()
        return self.history

    def _done(self, epochs, max_steps):
        return (epochs is not None and self.epoch >= epochs) or (
            max_steps is not None and self.step >= max_steps
        )

    def _loop(self, epochs, max_steps, on_step):
        while not self._done(epochs, max_steps):
            batches = self.data.batches(
                self.batch_size, self.shuffle, self.seed, self.epoch, start_batch=self.batch
            )
            micro = []
            for x, y, w in batches:
                micro.append((x, y, w))
                last_of_epoch = self.batch + len(micro) == self.batches_per_epoch
                if len(micro) < self.accumulate_steps and not last_of_epoch:
                    continue
                loss, norm, lr = self.train_step(micro)
                self.batch += len(micro)
                micro = []
                self.epoch_loss_sum += loss
                self.epoch_loss_count += 1
                for key, value in (("step", self.step), ("step_loss", loss), ("learning_rate", lr)):
                    self.history[key].append(value)
                if on_step is not None:
                    on_step(self, loss, norm, lr)
                if self.save_every and self.step % self.save_every == 0:
                    self.save_checkpoint()
                if self._stop_requested or (max_steps is not None and self.step >= max_steps):
                    return
            # the epoch is complete
            self.history["loss"].append(self.epoch_loss_sum / max(1, self.epoch_loss_count))
            self.epoch, self.batch = self.epoch + 1, 0
            self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    # --- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_name(self):
        return f"step-{self.step:08d}"

    def _state(self):
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "accumulate_steps": self.accumulate_steps,
            "reduction": self.reduction,
            "rng": self.rng.bit_generator.state,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_loss_count": self.epoch_loss_count,
            "next_learning_rate": self.optimizer.current_learning_rate(),
            "history": self.history,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save_checkpoint(self):
        """Write the full training state as checkpoint_dir/step-NNNNNNNN and point LATEST at it.

        Safe against a crash (even SIGKILL or a power cut) at any instant, in this order:
          1. leftovers of a writer that was killed (hidden .step-* and .LATEST.* entries) are removed;
          2. every file is written into a fresh hidden directory .step-NNNNNNNN.<random>.tmp and
             flushed to disk (fsync), then the directory itself is flushed;
          3. the directory is renamed to step-NNNNNNNN, so a visible step directory is always
             complete; the parent directory is flushed to make the rename durable;
          4. LATEST is replaced atomically (temporary file, fsync, rename, directory fsync);
          5. checkpoints older than the newest `keep_checkpoints` are renamed to hidden names
             first and deleted after, so none is ever visible half-deleted.
        A disk-full or permission error raises TrainingError naming the path; LATEST and the
        checkpoint it names are then unchanged.
        """
        from minibloom.io.checkpoint import save_params
        from minibloom.io.files import fsync_directory, write_bytes_atomic
        from minibloom.io.safetensors import write_safetensors

        if self.checkpoint_dir is None:
            raise ArgumentError("save_checkpoint: this Trainer has no checkpoint_dir")
        root = self.checkpoint_dir
        name = self._checkpoint_name()
        final = root / name
        kept = (
            f"LATEST still names {self.last_checkpoint}, which is intact"
            if self.last_checkpoint
            else "no earlier checkpoint of this run was touched"
        )
        # NaN propagates through min and max, so two reductions find any NaN / inf without a
        # boolean temporary the size of the embedding
        bad = next(
            (
                k
                for k, a in self.lm.params.items()
                if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max()))
            ),
            None,
        )
        if bad is not None:  # an overflowing update: such a state is not worth resuming from
            raise TrainingError(
                f"{final}: not saved: parameter {bad} holds non-finite values (the last update "
                f"overflowed; lower the learning rate); {kept}"
            )
        tmp = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in [
                *root.glob(".step-*"),
                *root.glob(".LATEST.*"),
            ]:  # a killed writer's leftovers
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(
                    missing_ok=True
                )
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
            save_params(tmp, self.lm.params, dtype="float32")  # model.safetensors, HF names
            opt = self.optimizer.state_dict()
            moments = {f"m.{k}": a for k, a in opt["m"].items()} | {
                f"v.{k}": a for k, a in opt["v"].items()
            }
            if moments:
                write_safetensors(tmp / "optimizer.safetensors", moments, "F32")
            write_bytes_atomic(
                tmp / "state.json", json.dumps(self._state(), indent=1).encode("utf-8")
            )
            write_bytes_atomic(
                tmp / "config.json", self.lm.backbone.config.to_json_string().encode("utf-8")
            )
            tokenizer = getattr(self.lm, "tokenizer", None)
            if hasattr(
                tokenizer, "to_json_string"
            ):  # a BloomTokenizer (test doubles have no file form)
                write_bytes_atomic(
                    tmp / "tokenizer.json", tokenizer.to_json_string().encode("utf-8")
                )
            generation = getattr(self.lm, "generation_config", None)
            if hasattr(generation, "to_json_string"):
                write_bytes_atomic(
                    tmp / "generation_config.json", generation.to_json_string().encode("utf-8")
                )
            fsync_directory(tmp)
            if final.exists():  # the same step saved twice: move the old copy aside, drop it below
                aside = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".old"))
                os.replace(final, aside / name)
            os.replace(tmp, final)
            fsync_directory(root)
            write_bytes_atomic(root / "LATEST", (name + "\n").encode("utf-8"))
        except (OSError, MinibloomError) as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise TrainingError(
                f"{final}: cannot save the checkpoint ({describe_error(e)}); {kept}"
            ) from None
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.last_checkpoint = name
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
        for p in old[: max(0, len(old) - (self.keep_checkpoints - 1))]:
            try:
                aside = Path(tempfile.mkdtemp(dir=root, prefix=f".{p.name}.", suffix=".old"))
                os.replace(p, aside / p.name)
            except OSError:  # cannot remove an old checkpoint: harmless, it stays complete
                continue
            shutil.rmtree(aside, ignore_errors=True)
        for aside in root.glob(f".{name}.*.old"):  # an older copy of this same step
            shutil.rmtree(aside, ignore_errors=True)
        return final

    def load_checkpoint(self, path=None):
        """Restore params, optimizer, position, RNG and history from a checkpoint directory
        (default: the one checkpoint_dir/LATEST names). Returns its path.

        Refuses (TrainingError, nothing changed) a checkpoint whose data settings, config.json or
        tokenizer.json differ from this trainer's and its model's: a resumed run continues the
        same run. Reads model.safetensors, or params.safetensors of older checkpoints."""
        from minibloom.io.safetensors import read_safetensors

        path = Path(path) if path is not None else latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise TrainingError(
                f"no checkpoint to resume from in {self.checkpoint_dir} (no LATEST file)"
            )
        state = read_json_file(path / "state.json", TrainingError, "training state")
        if (
            not isinstance(state, dict)
            or state.get("format") != STATE_FORMAT
            or state.get("version") != STATE_VERSION
        ):
            found = (
                (state.get("format"), state.get("version"))
                if isinstance(state, dict)
                else (type(state).__name__, "")
            )
            raise TrainingError(
                f"{path / 'state.json'}: expected format {STATE_FORMAT} v{STATE_VERSION}, "
                f"found {found[0]} v{found[1]}"
            )
        for key in ("batch_size", "shuffle", "seed", "accumulate_steps", "reduction"):
            if state.get(key) != getattr(self, key):
                raise TrainingError(
                    f"{path}: the checkpoint was trained with {key}={state.get(key)!r}, this run has "
                    f"{getattr(self, key)!r}; the data position would not match (use the same value)"
                )
        check_same_model(path, self.lm)
        weights = path / "model.safetensors"
        if not weights.is_file():
            weights = path / "params.safetensors"  # checkpoints written before model.safetensors
        try:
            stored = read_safetensors(weights)
        except (OSError, MinibloomError) as e:
            raise TrainingError(
                f"{path}: unreadable checkpoint weights ({describe_error(e)})"
            ) from None
        live = self.lm.params
        if set(stored) != set(live):
            raise TrainingError(
                f"{weights}: tensors differ from the model's: {sorted(set(stored) ^ set(live))[:5]}"
            )
        for k, (dtype, a) in stored.items():
            if dtype != "F32" or a.shape != live[k].shape:
                raise TrainingError(
                    f"{weights}: tensor {k} is {dtype} {a.shape}, the model expects F32 {live[k].shape}"
                )
        for k, (_, a) in stored.items():
            live[k][...] = a  # in place: callers holding lm.params see the restored values
        m, v = {}, {}
        if (path / "optimizer.safetensors").exists():
            for k, (_, a) in read_safetensors(path / "optimizer.safetensors").items():
                (m if k.startswith("m.") else v)[k[2:]] = a
        self.optimizer.load_state_dict({"step": state["step"], "m": m, "v": v})
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.epoch_loss_sum, self.epoch_loss_count = (
            state["epoch_loss_sum"],
            state["epoch_loss_count"],
        )
        self.history = state["history"]
        self.last_checkpoint = path.name
        return path


def tokenizer_difference(a, b) -> str | None:
    """How two BloomTokenizers differ ("8192 vs 700 tokens", "token 300: 'ab' vs 'ac'", ...), or
    None if they encode alike (same vocabulary, merges and added tokens)."""
    ja, jb = a.to_json(), b.to_json()
    if ja == jb:
        return None
    va, vb = ja["model"]["vocab"], jb["model"]["vocab"]
    if len(va) != len(vb):
        return f"{len(va)} vs {len(vb)} tokens"
    ia, ib = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
    for i in sorted(set(ia) | set(ib)):
        if ia.get(i) != ib.get(i):
            return f"token {i} is {ia.get(i)!r} vs {ib.get(i)!r}"
    if ja["model"]["merges"] != jb["model"]["merges"]:
        return "same tokens but different merges"
    return "different added tokens or pipeline"


def config_difference(a, b) -> str | None:
    """The keys two BloomConfigs differ in ("n_layer 2 vs 1, hidden_size 24 vs 48"), or None."""
    da, db = a.to_dict(), b.to_dict()
    keys = [k for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
    return ", ".join(f"{k} {da.get(k)!r} vs {db.get(k)!r}" for k in keys[:4]) or None


def check_same_model(checkpoint, lm) -> None:
    """TrainingError unless `lm` has the checkpoint's config.json (and tokenizer.json, if both have one)."""
    from minibloom.config import BloomConfig
    from minibloom.tokenizer import BloomTokenizer

    checkpoint = Path(checkpoint)
    if (checkpoint / "config.json").is_file():
        diff = config_difference(
            lm.backbone.config, BloomConfig.from_json_file(checkpoint / "config.json")
        )
        if diff:
            raise TrainingError(
                f"{checkpoint / 'config.json'}: the model to resume differs from the checkpoint's "
                f"config ({diff}: this model vs the checkpoint); build it from the checkpoint's config"
            )
    tokenizer = getattr(lm, "tokenizer", None)
    if hasattr(tokenizer, "to_json") and (checkpoint / "tokenizer.json").is_file():
        diff = tokenizer_difference(
            tokenizer, BloomTokenizer.from_file(checkpoint / "tokenizer.json")
        )
        if diff:
            raise TrainingError(
                f"{checkpoint / 'tokenizer.json'}: the model's tokenizer ({tokenizer.source}) differs "
                f"from the run's ({diff}); resume with the checkpoint's tokenizer"
            )


def latest_checkpoint(checkpoint_dir):
    """The checkpoint directory named by checkpoint_dir/LATEST, or None if there is none."""
    if checkpoint_dir is None:
        return None
    latest = Path(checkpoint_dir) / "LATEST"
    if not latest.is_file():
        return None
    try:
        name = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"{latest}: unreadable ({describe_error(e)})") from None
    if not name.startswith("step-") or not name[5:].isdigit() or not name.isascii():
        raise TrainingError(
            f"{latest}: expected the name of a checkpoint (step-NNNNNNNN), found {name[:60]!r}"
        )
    path = Path(checkpoint_dir) / name
    if not (path / "state.json").is_file():
        raise TrainingError(f"{latest} names {path.name}, which is not a complete checkpoint")
    return path


def previous_run(out_dir) -> str | None:
    """What in `out_dir` belongs to an earlier `train` run, or None.

    A previous run is any of: checkpoints/ holding LATEST or a step-* directory, a model/
    entry, or loss_curve.csv. The token cache and any other file do not count (the cache is
    rebuilt or re-used; other files are the user's and are never touched)."""
    out_dir = Path(out_dir)
    found = []
    ck = out_dir / "checkpoints"
    if (ck / "LATEST").exists() or (ck.is_dir() and any(ck.glob("step-*"))):
        found.append("checkpoints/")
    for name in ("model", "loss_curve.csv"):
        if (out_dir / name).exists():
            found.append(name + ("/" if (out_dir / name).is_dir() else ""))
    return ", ".join(found) or None


def check_out_dir(out_dir, resume, name="out_dir") -> Path:
    """The output directory of a run, checked before anything is read or written.

    Refuses (ArgumentError, nothing touched) a path that is a file (or under one), a directory
    holding a previous run (see `previous_run`) unless `resume`, and with `resume` a directory
    holding a previous run but no checkpoint to resume from."""
    out_dir = check_output_dir(name, out_dir)
    earlier = previous_run(out_dir) if out_dir.is_dir() else None
    if earlier is None:
        return out_dir
    if not resume:
        raise ArgumentError(
            f"{name} {out_dir}: holds a previous run ({earlier}); pass --resume to continue it, "
            f"or choose a new {name} (nothing was changed)"
        )
    if latest_checkpoint(out_dir / "checkpoints") is None:
        raise ArgumentError(
            f"{name} {out_dir}: --resume, but {out_dir / 'checkpoints'} has no LATEST checkpoint to "
            f"resume from while {earlier} exists; choose a new {name} (nothing was changed)"
        )
    return out_dir


def training_bytes(config, batch_size, sequence_length, with_params=True) -> int:
    """Memory one training step needs, float32: gradients and AdamW's two moments (3 x params, plus
    the params themselves unless they already exist), and the activations the backward keeps."""
    C, H, L, V = config.hidden_size, config.n_head, config.n_layer, config.vocab_size
    tokens = batch_size * sequence_length
    activations = L * tokens * (16 * C + 2 * H * sequence_length) + 2 * tokens * V
    return 4 * ((4 if with_params else 3) * config.num_parameters() + activations)


def check_training_fits(
    config, batch_size, sequence_length, with_params=True, source="the model"
) -> None:
    """ArgumentError (before any allocation) if training `config` cannot fit in memory."""
    from minibloom.memory import check_fits

    check_fits(
        training_bytes(config, batch_size, sequence_length, with_params),
        f"training {source} ({config.num_parameters():,} parameters; batch_size {batch_size} x "
        f"sequence_length {sequence_length}: parameters, gradients, AdamW moments and activations)",
        "use a smaller model, --batch-size or --seq-len",
    )


# ------------------------------------------------------------------------------------------------
# `python -m minibloom train`: a run over corpus files, with progress, evaluation and outputs
# ------------------------------------------------------------------------------------------------


def write_loss_curve(history, evals, out_dir, log=print):
    """Write out_dir/loss_curve.csv (always) and loss_curve.png (when matplotlib is installed).

    history: a Trainer history (per-step "step", "step_loss", "learning_rate");
    evals: list of (step, held-out loss). Returns the paths written.
    """
    from minibloom.io.files import write_bytes_atomic

    out_dir = Path(out_dir)
    held = dict(evals)
    rows = ["step,train_loss,learning_rate,heldout_loss"]
    for step, loss, lr in zip(history["step"], history["step_loss"], history["learning_rate"]):
        rows.append(f"{step},{loss!r},{lr!r},{held.get(step, '')!r}".replace("''", ""))
    csv = out_dir / "loss_curve.csv"
    write_bytes_atomic(csv, ("\n".join(rows) + "\n").encode("utf-8"), error=TrainingError)
    written = [csv]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(
            "matplotlib is not installed (pip install -e '.[plot]'): wrote the loss curve as CSV only"
        )
        return written
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["step_loss"], lw=1, label="train")
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="minibloom train")
    ax.legend()
    png = out_dir / "loss_curve.png"
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(png, image.getvalue(), error=TrainingError)
    return written + [png]


def train_on_files(
    lm,
    data_files,
    out_dir,
    *,
    sequence_length,
    batch_size,
    steps=None,
    epochs=None,
    learning_rate=3e-4,
    schedule="cosine",
    warmup=0,
    weight_decay=0.1,
    clip=1.0,
    accumulate_steps=1,
    heldout=0.05,
    eval_every=100,
    eval_batches=20,
    save_every=200,
    seed=0,
    resume=False,
    log=print,
    progress=True,
):
    """The whole `train` command: tokenize the corpus (cached), train with periodic held-out
    evaluation and checkpoints in out_dir/checkpoints, then write the final model as a preset
    directory out_dir/model (config.json, model.safetensors, tokenizer.json) and the loss curve.

    `lm` must have a tokenizer (its preprocessor's). Every argument is checked before anything is
    read or written; `out_dir` holding a previous run is refused unless `resume` (see
    `check_out_dir`), and with `resume` the model must have the checkpoint's config and
    tokenizer. `clip` 0 or None: no clipping. Returns the Trainer.
    """
    from minibloom.optim import BIAS_AND_NORM, AdamW, get_schedule
    from minibloom.training.data import TokenWindows

    if lm.tokenizer is None:
        raise ArgumentError("train: the model has no tokenizer; pass --tokenizer tokenizer.json")
    if (steps is None) == (epochs is None):
        raise ArgumentError("train: give exactly one of steps and epochs")
    sequence_length = check_int("sequence_length", sequence_length, lo=1)
    batch_size = check_int("batch_size", batch_size, lo=1)
    steps = None if steps is None else check_int("steps", steps, lo=1)
    epochs = None if epochs is None else check_int("epochs", epochs, lo=1)
    learning_rate = check_float("learning_rate", learning_rate, lo=0.0, lo_open=True)
    check_choice("schedule", schedule, ("cosine", "linear", "constant"))
    warmup = check_int("warmup", warmup, lo=0)
    weight_decay = check_float("weight_decay", weight_decay, lo=0.0)
    clip = None if clip is None else (check_float("clip", clip, lo=0.0) or None)
    accumulate_steps = check_int("accumulate_steps", accumulate_steps, lo=1)
    check_float("heldout", heldout, 0.0, 1.0, lo_open=True, hi_open=True)
    eval_every = check_int("eval_every", eval_every, lo=0)
    eval_batches = check_int("eval_batches", eval_batches, lo=1)
    check_int("save_every", save_every, lo=0)
    check_int("seed", seed, lo=0)
    out_dir = check_out_dir(out_dir, resume)
    latest = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if latest is not None:
        check_same_model(latest, lm)  # before anything is read or written
    check_training_fits(lm.backbone.config, batch_size, sequence_length, with_params=False)
    created = [p for p in (out_dir, out_dir / "token_cache") if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(
            f"out_dir {out_dir}: cannot create the directory ({describe_error(e)})"
        ) from None
    try:
        windows = TokenWindows.from_files(
            data_files, lm.tokenizer, sequence_length, out_dir / "token_cache"
        )
    except BaseException:  # a bad corpus file: leave no trace of this run (only what it created)
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise
    train_data, held = windows.split(heldout)
    per_epoch = -(-train_data.num_batches(batch_size) // accumulate_steps)
    if per_epoch == 0:
        raise ArgumentError(
            f"data: {len(train_data)} training windows of {sequence_length + 1} tokens make no batch "
            f"of {batch_size}; use more text, a smaller --batch-size or --seq-len"
        )
    total = steps if steps is not None else epochs * per_epoch
    opt = AdamW(
        get_schedule(schedule, learning_rate, warmup, total),
        weight_decay=weight_decay,
        exclude_from_weight_decay=BIAS_AND_NORM,
        global_clipnorm=clip,
    )
    trainer = Trainer(
        lm,
        opt,
        train_data,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        accumulate_steps=accumulate_steps,
        checkpoint_dir=out_dir / "checkpoints",
        save_every=save_every,
    )
    if latest is not None:
        path = trainer.load_checkpoint(latest)
        log(f"resumed from {path} (step {trainer.step}, epoch {trainer.epoch + 1})")
    log(
        f"data: {len(train_data)} training / {len(held)} held-out windows of {sequence_length} tokens; "
        f"{per_epoch} steps per epoch; {total} steps"
    )
    evals = [tuple(e) for e in trainer.history.get("heldout", [])]
    tokens_per_step = batch_size * accumulate_steps * sequence_length

    def held_out_loss():
        subset = TokenWindows(
            held.tokens,
            held.sequence_length,
            held.start,
            min(held.stop, held.start + eval_batches * batch_size),
        )
        return evaluate(lm, subset, batch_size)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=trainer.step, unit="step", dynamic_ncols=True)
    clock = {"t": time.perf_counter()}

    def on_step(t, loss, norm, lr):
        now = time.perf_counter()
        tok_s = tokens_per_step / max(now - clock["t"], 1e-9)
        clock["t"] = now
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
        if eval_every and t.step % eval_every == 0:
            m = held_out_loss()
            evals.append((t.step, m["loss"]))
            t.history["heldout"] = [list(e) for e in evals]  # saved with the checkpoints
            msg = f"step {t.step}: held-out loss {m['loss']:.4f}, accuracy {m['accuracy']:.3f}, perplexity {m['perplexity']:.2f}"
            (bar.write if bar is not None else log)(msg)
            clock["t"] = time.perf_counter()  # evaluation time is not training throughput

    try:
        trainer.run(max_steps=total, on_step=on_step)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) and e.args:
            log(f"{e.args[0]}; run the same command with --resume to continue")
        if trainer.history[
            "step"
        ]:  # keep the curve so far, but let the run's own error be the one reported
            try:
                write_loss_curve(trainer.history, evals, out_dir, log)
            except MinibloomError:
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
    if trainer.history["step"]:
        write_loss_curve(trainer.history, evals, out_dir, log)
    final = held_out_loss()
    log(
        f"done: step {trainer.step}, held-out loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}"
    )
    lm.save_to_preset(out_dir / "model")
    log(
        f"model written to {out_dir / 'model'} (load with BloomCausalLM.from_preset or transformers)"
    )
    return trainer
