"""BloomCausalLM: the task object users hold, shaped like keras-hub's `BloomCausalLM`.

It owns a `BloomBackbone` (the transformer, model.py) and an optional
`BloomCausalLMPreprocessor` (tokenizer + packing, preprocessor.py), and exposes:
construction and checkpoints (`from_preset`, `save_to_preset`), the forward pass (`predict`),
the loss and its gradients (`loss_and_grads`), training (`compile`, `fit`, `evaluate`) and text
generation (`generate`, `stream`). The methods are thin: the work happens in the module named
in each section, so each of those reads on its own.

The LM head is tied: logits = final hidden states @ word_embeddings.weight.T, no bias.
"""

import numpy as np


def _check_auto(preprocessor):
    from minibloom.errors import ArgumentError

    if preprocessor != "auto":
        raise ArgumentError(
            f"preprocessor: expected 'auto', None or a preprocessor, found {preprocessor!r}"
        )


def _check_vocab_fits(directory, config, preprocessor):
    """An id past the embedding's last row would have no vector: refuse the pair up front."""
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None and tokenizer.vocabulary_size() > config.vocab_size:
        from minibloom.errors import ConfigError

        raise ConfigError(
            f"{directory / 'config.json'}: vocab_size {config.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocabulary_size()} ids; expected vocab_size >= the tokenizer's size"
        )


class BloomCausalLM:
    """A BLOOM language model with its (optional) preprocessor.

    Args:
        backbone: a `minibloom.model.BloomBackbone`.
        preprocessor: a `minibloom.preprocessor.BloomCausalLMPreprocessor`, or None to work on
            token ids only (`{"token_ids", "padding_mask"}` dicts).
    """

    def __init__(self, backbone, preprocessor=None, generation_config=None):
        from minibloom.config import GenerationConfig

        self.backbone = backbone
        self.preprocessor = preprocessor
        # the stop and pad ids of generate (HF generation_config.json; from config.json if absent)
        self.generation_config = (
            GenerationConfig.from_config(backbone.config)
            if generation_config is None
            else generation_config
        )
        # the dtype the weights were stored in when loaded: what save_to_preset writes by default
        self.checkpoint_dtype = None

    @property
    def params(self):
        """The backbone's parameters: dict of float32 arrays keyed by HF names (no `transformer.`)."""
        return self.backbone.params

    @property
    def tokenizer(self):
        return None if self.preprocessor is None else self.preprocessor.tokenizer

    # --- construction and checkpoints (presets.py, checkpoint.py) -------------------------------

    @classmethod
    def from_preset(cls, preset=None, load_weights=True, preprocessor="auto", dtype="float32"):
        """Load a model from a directory, a preset name or `hf://org/name` (see presets.resolve).

        Args:
            preset: None for the small model shipped in weights/, a directory holding config.json
                + safetensors (+ tokenizer.json), a keras-hub preset directory (config.json +
                model.weights.h5 + assets; needs h5py), a preset name such as "bloom_560m_multi"
                found in $MINIBLOOM_HOME, the HF hub cache or the kagglehub cache, "hf://org/name"
                or "kaggle://keras/bloom/keras/<preset>[/<version>]".
            load_weights: False builds the architecture with a seeded random init instead.
            preprocessor: "auto" builds a BloomCausalLMPreprocessor from the directory's
                tokenizer.json when there is one (from a keras-hub preset: its tokenizer assets
                and preprocessor.json, packing as keras-hub does); None for none; or an object.
            dtype: in-memory parameter dtype, "float32" or "float16" (half the memory; the ops
                widen weights to float32 per use, see checkpoint.py), "auto" (each tensor as the
                checkpoint stores it, like transformers' torch_dtype="auto": F16 -> float16, BF16
                -> uint16 bfloat16 words, F32 -> float32; a 16-bit model decodes from half the
                bytes), or "float64" (the whole forward then runs in float64 through the
                reference ops: the truth of `compare`). Training needs float32 parameters: the
                optimizer refuses 16-bit ones.
        """
        from minibloom.config import BloomConfig, GenerationConfig
        from minibloom.io import presets
        from minibloom.io.checkpoint import finish_interrupted_save, load_params, stored_dtype
        from minibloom.model import BloomBackbone

        directory = presets.default_model_dir() if preset is None else presets.resolve(preset)
        finish_interrupted_save(
            directory
        )  # a save killed after its commit point: complete it first
        from minibloom.io import keras

        if keras.is_keras_preset(directory):  # before the HF reader, which would refuse it
            return cls._from_keras_preset(directory, load_weights, preprocessor, dtype)
        config = BloomConfig.from_json_file(directory / "config.json")
        generation_config = GenerationConfig.from_model_dir(directory, config)
        params = load_params(directory, config, dtype=dtype) if load_weights else None
        backbone = BloomBackbone.from_config(config, params)
        if isinstance(preprocessor, str):
            _check_auto(preprocessor)
            preprocessor = None
            if (directory / "tokenizer.json").is_file():
                from minibloom.preprocessor import BloomCausalLMPreprocessor
                from minibloom.tokenizer import BloomTokenizer

                preprocessor = BloomCausalLMPreprocessor(
                    BloomTokenizer.from_file(directory / "tokenizer.json")
                )
        _check_vocab_fits(directory, config, preprocessor)
        lm = cls(backbone, preprocessor, generation_config)
        lm.checkpoint_dtype = stored_dtype(directory) if load_weights else None
        return lm

    @classmethod
    def _from_keras_preset(cls, directory, load_weights, preprocessor, dtype):
        """from_preset of a keras-hub preset directory (io/keras.py): the config from its keras
        config.json, the special-token ids from its tokenizer assets, the preprocessor as
        keras-hub builds it (preprocessor.json, else keras' defaults: `<s>` added, length 1024;
        prompts right-padded)."""
        from minibloom.config import GenerationConfig
        from minibloom.io import keras
        from minibloom.model import BloomBackbone
        from minibloom.preprocessor import BloomCausalLMPreprocessor
        from minibloom.tokenizer import BloomTokenizer

        has_assets = (directory / keras.VOCABULARY_FILE).is_file()
        tokenizer = BloomTokenizer.from_preset(directory) if has_assets else None
        if isinstance(preprocessor, str):
            _check_auto(preprocessor)
            preprocessor = (
                None
                if tokenizer is None
                else BloomCausalLMPreprocessor(
                    tokenizer, **keras.read_preprocessor_settings(directory), padding_side="right"
                )
            )
        config = keras.read_config(directory, getattr(preprocessor, "tokenizer", tokenizer))
        params, stored = (
            keras.load_params(directory, config, dtype) if load_weights else (None, None)
        )
        _check_vocab_fits(directory, config, preprocessor)
        lm = cls(
            BloomBackbone.from_config(config, params),
            preprocessor,
            GenerationConfig.from_config(config),
        )
        lm.checkpoint_dtype = stored
        return lm

    def save_to_preset(self, directory, dtype=None, max_shard_bytes=None, format="hf"):
        """Write the model into `directory` as an HF model directory (or a keras-hub preset);
        returns its path.

        format="hf" (default) writes config.json, generation_config.json, model.safetensors (or
        shards + index) and, with a tokenizer, tokenizer.json; transformers'
        `BloomForCausalLM.from_pretrained(directory)` loads the result.
        format="keras" writes a keras-hub preset (io/keras.py): config.json, model.weights.h5,
        metadata.json, task.json and, with a preprocessor, tokenizer.json, preprocessor.json and
        assets/tokenizer/{vocabulary.json, merges.txt}; `keras_hub.models.BloomCausalLM.from_preset`
        and `BloomBackbone.from_preset` load it (h5py needed: `pip install 'minibloom[keras]'`).

        Only the files a model consists of are written; every other file in the directory (a
        model card, notes, sub-directories) is kept. The stale files of an earlier save are
        removed: old weight files (model.safetensors, the old index and the shards it names), and
        the other format's files when the format changes. A directory whose config.json is not a
        BLOOM config (HF or keras-hub) is refused with nothing touched (it is somebody else's
        project, not a model to replace).

        The files change all at once (checkpoint.commit_files): a crash, even SIGKILL or a power
        cut, leaves either the old model or the new one, never a mix. A disk-full or permission
        error raises CheckpointError naming the path, with the directory unchanged.

        dtype: the stored dtype ("float32", "float16" or "bfloat16"); None keeps the dtype the
            weights were loaded from (an F16 checkpoint stays F16, as transformers' dtype="auto"
            does), else the in-memory dtype of the parameters.
        max_shard_bytes: shard the weights into files of at most this many bytes (format="hf").
        """
        from pathlib import Path

        from minibloom.config import BloomConfig
        from minibloom.errors import ArgumentError, CheckpointError, ConfigError
        from minibloom.io import keras
        from minibloom.io.checkpoint import commit_files, stale_weight_files, weight_writers

        if format not in ("hf", "keras"):
            raise ArgumentError(f"format: expected 'hf' or 'keras', found {format!r}")
        if format == "keras" and max_shard_bytes is not None:
            raise ArgumentError(
                "max_shard_bytes: only for format='hf' (keras presets are one .h5 file)"
            )
        try:
            directory = Path(directory).expanduser()
        except RuntimeError as e:  # "~nosuchuser/x"
            raise ArgumentError(f"directory {str(directory)!r}: cannot be expanded ({e})") from None
        if directory.exists() and not directory.is_dir():
            raise ArgumentError(
                f"{directory}: exists and is not a directory; expected a model directory to save into"
            )
        old_format = None
        if (directory / "config.json").exists():
            old_format = "keras" if keras.is_keras_preset(directory) else "hf"
            try:
                if old_format == "keras":
                    keras.read_config(directory)
                else:
                    BloomConfig.from_json_file(directory / "config.json")
            except ConfigError as e:
                raise ArgumentError(
                    f"{directory}: its config.json is not a BLOOM model config ({e}); refusing to save a model "
                    f"there, nothing was changed"
                ) from None
        if dtype is None:
            emb = self.backbone.params["word_embeddings.weight"]
            kept = {
                np.dtype(np.float16): "float16",
                np.dtype(np.uint16): "bfloat16",
            }  # uint16: bf16
            dtype = self.checkpoint_dtype or kept.get(emb.dtype, "float32")
        if format == "keras":
            writers = keras.preset_writers(self, dtype)
        else:
            writers = weight_writers(
                self.backbone.params, dtype=dtype, max_shard_bytes=max_shard_bytes
            )
            config_bytes = self.backbone.config.to_json_string().encode("utf-8")
            generation_bytes = self.generation_config.to_json_string().encode("utf-8")
            writers["config.json"] = lambda f: f.write(config_bytes)
            writers["generation_config.json"] = lambda f: f.write(generation_bytes)
            if self.tokenizer is not None:
                tokenizer_bytes = self.tokenizer.to_json_string().encode("utf-8")
                writers["tokenizer.json"] = lambda f: f.write(tokenizer_bytes)
        stale = []
        if directory.is_dir():
            weights = {"hf": stale_weight_files, "keras": keras.stale_weight_files}
            stale = weights[format](directory)
            if old_format is not None and old_format != format:  # the other format's files go too
                stale += weights[old_format](directory) + keras.format_files(directory, old_format)
            stale = sorted({n for n in stale if n not in writers})
        try:
            commit_files(directory, writers, stale)
        except CheckpointError as e:
            raise CheckpointError(f"{directory}: cannot save the model ({e})") from None
        return directory

    save_pretrained = save_to_preset  # the transformers spelling

    # --- forward, loss and gradients (model.py, losses.py) --------------------------------------

    def _token_inputs(self, x):
        """x as (token_ids, padding_mask): a token dict, or raw strings run through the preprocessor."""
        from minibloom.errors import ArgumentError

        if not isinstance(x, dict):
            if self.preprocessor is None:
                raise ArgumentError(
                    "x: raw strings need a preprocessor; pass {'token_ids', 'padding_mask'} instead"
                )
            x = self.preprocessor(x)[0]
        if "token_ids" not in x:
            raise ArgumentError("x: expected a dict with 'token_ids' (and 'padding_mask')")
        ids = x["token_ids"]
        mask = x.get("padding_mask")
        return ids, (np.ones(np.shape(ids), dtype=bool) if mask is None else mask)

    def predict(self, x, batch_size=None):
        """Logits (B, T, V) float32 for {"token_ids", "padding_mask"} (or raw strings with a
        preprocessor), computed `batch_size` rows at a time (None: all at once)."""
        from minibloom.errors import ArgumentError

        ids, mask = self._token_inputs(x)
        ids, mask = np.asarray(ids), np.asarray(mask)
        if batch_size is not None and (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size <= 0
        ):
            raise ArgumentError(
                f"batch_size: expected a positive integer or None, found {batch_size!r}"
            )
        from minibloom.memory import check_fits

        if ids.ndim != 2:
            raise ArgumentError(f"token_ids: expected a (B, T) array, found shape {ids.shape}")
        B, T = ids.shape
        check_fits(
            B * T * self.backbone.config.vocab_size * 4,
            f"predict: the logits of {B} x {T} tokens",
            "predict fewer rows or shorter sequences at a time",
        )
        step = max(B, 1) if batch_size is None else int(batch_size)
        if step >= B:  # one chunk: its logits are the result, no copy
            return self.backbone.logits(self.backbone.forward(ids, mask).hidden)
        out = np.empty((B, T, self.backbone.config.vocab_size), dtype=np.float32)
        for i in range(0, B, step):  # each chunk's logits written into place, never concatenated
            hidden = self.backbone.forward(ids[i : i + step], mask[i : i + step]).hidden
            out[i : i + step] = self.backbone.logits(hidden)
        return out

    def loss_and_grads(self, x, y, sample_weight=None, reduction="mean", rng=None):
        """Cross-entropy loss and the gradient of every parameter: (loss float, grads dict like params).

        x: {"token_ids", "padding_mask"} (B, T); y: (B, T) targets already shifted (y[b, t] follows
        position t; -100 = ignore). sample_weight: (B, T) weights; None means the padding mask of x
        (a position counts when its input token is real). keras-hub's preprocessor returns
        mask[:, 1:] instead, which also drops the last real token's prediction of a pad: pass the
        preprocessor's sample_weight to get exactly that. reduction: "mean" = HF's
        sum(w * ce) / sum(w), "sum_over_batch_size" = keras' sum(w * ce) / (B * T) (losses.py).
        Dropout runs when the config has a rate > 0 and then needs `rng` (np.random.Generator).
        """
        from minibloom import losses

        ids, mask = self._token_inputs(x)
        if sample_weight is None:
            sample_weight = np.asarray(mask, dtype=np.float32)
        result = self.backbone.forward(ids, mask, training=True, rng=rng)
        logits = self.backbone.logits(result.hidden)  # (B, T, V)
        # the probabilities overwrite the logits' (B, T, V) buffer: the largest array of the step
        loss, cache = losses.softmax_cross_entropy_forward(
            logits, y, sample_weight, reduction, overwrite_logits=True
        )
        del logits
        dlogits = losses.softmax_cross_entropy_backward(1.0, cache)
        grads = self.backbone.backward(result.saved, dlogits=dlogits, hidden=result.hidden)
        return loss, grads

    # --- training (train.py, optim.py) ----------------------------------------------------------

    def compile(self, optimizer="auto", loss="auto", sampler="greedy"):
        """Choose the optimizer, the loss reduction and the generation sampler (keras-hub style).

        optimizer: "auto" = keras-hub's default, keras' `Adam(2e-5)` (epsilon 1e-7 added to the
            raw sqrt(v), keras' bias correction: `minibloom.optim.Adam`, equal to
            `keras.optimizers.Adam` step for step); "adamw" = `AdamW(1e-3)` with torch's
            defaults (torch.optim.AdamW); or an optimizer instance (`Adam`, `AdamW`).
        loss: "auto" or "mean" = HF's mean over target tokens; "sum_over_batch_size" = keras'
            reduction (sum / (B * T), see losses.py; what keras-hub's default loss computes).
        sampler: stored as given in `self.sampler` for `generate` (generate.py interprets it).
        """
        from minibloom.errors import ArgumentError
        from minibloom.optim import Adam, AdamW

        if isinstance(optimizer, str):
            if optimizer not in ("auto", "adamw"):
                raise ArgumentError(
                    f"optimizer: expected 'auto', 'adamw' or an optimizer, found {optimizer!r}"
                )
            optimizer = Adam(2e-5) if optimizer == "auto" else AdamW(1e-3)
        elif not hasattr(optimizer, "apply") or not hasattr(optimizer, "state_dict"):
            raise ArgumentError(
                f"optimizer: expected 'auto', 'adamw' or an optimizer (Adam, AdamW), found "
                f"{type(optimizer).__name__}"
            )
        if loss not in ("auto", "mean", "sum_over_batch_size"):
            raise ArgumentError(
                f"loss: expected 'auto', 'mean' or 'sum_over_batch_size', found {loss!r}"
            )
        self.optimizer = optimizer
        self.loss_reduction = "mean" if loss == "auto" else loss
        self.sampler = sampler

    def _compiled(self):
        if getattr(self, "optimizer", None) is None:
            self.compile()
        return self.optimizer, self.loss_reduction

    def fit(
        self,
        x,
        y=None,
        sample_weight=None,
        batch_size=8,
        epochs=1,
        validation_data=None,
        shuffle=True,
        seed=0,
        accumulate_steps=1,
        checkpoint_dir=None,
        save_every=None,
        resume=False,
        verbose=1,
    ):
        """Train on raw strings (with a preprocessor), a token dict plus y (and sample_weight), or
        a dataset (`minibloom.training.data.TokenWindows`, `minibloom.training.train.ArrayDataset`).

        Runs `epochs` epochs of shuffled batches (order seeded by (seed, epoch)), evaluating
        `validation_data` (same kinds as x, or an (x, y, sample_weight) tuple) after each epoch.
        With `checkpoint_dir`, the full training state is saved there (every `save_every` steps,
        on Ctrl-C and at the end); `resume=True` continues from its latest checkpoint.
        Returns a History-like dict: "loss" (per epoch), "val_loss" / "val_accuracy" /
        "val_perplexity" (per epoch, with validation_data), and per step "step", "step_loss",
        "learning_rate". See minibloom/training/train.py.
        """
        from minibloom.arguments import check_int
        from minibloom.errors import ArgumentError
        from minibloom.training import train

        epochs = check_int("epochs", epochs, lo=1)
        narrow = [k for k, p in self.backbone.params.items() if p.dtype != np.float32]
        if narrow:  # 16-bit (dtype="auto"/"float16") or float64 weights: AdamW updates float32
            found = self.backbone.params[narrow[0]].dtype
            found = "bfloat16 words" if found == np.uint16 else found
            raise ArgumentError(
                f"fit: training needs float32 parameters, found {found} ({narrow[0]} and "
                f"{len(narrow) - 1} more); load the model with dtype='float32' to train it"
            )
        optimizer, reduction = self._compiled()
        data = train.as_dataset(self, x, y, sample_weight)
        val = None if validation_data is None else train.as_dataset(self, validation_data)
        trainer = train.Trainer(
            self,
            optimizer,
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            reduction=reduction,
            accumulate_steps=accumulate_steps,
            checkpoint_dir=checkpoint_dir,
            save_every=save_every,
        )
        if resume and train.latest_checkpoint(checkpoint_dir) is not None:
            trainer.load_checkpoint()
        for _ in range(trainer.epoch, epochs):
            bar = None
            if verbose:
                from tqdm import tqdm

                bar = tqdm(
                    total=trainer.batches_per_epoch,
                    initial=trainer.batch,
                    desc=f"epoch {trainer.epoch + 1}/{epochs}",
                )

            def show(t, loss, grad_norm, lr):
                bar.update(
                    t.batch - bar.n
                )  # batches done in this epoch (several per step when accumulating)
                bar.set_postfix(loss=f"{loss:.4f}")

            trainer.run(epochs=trainer.epoch + 1, on_step=show if bar is not None else None)
            if bar is not None:
                bar.close()
            if val is not None:
                metrics = train.evaluate(self, val, batch_size, reduction)
                for k in ("loss", "accuracy", "perplexity"):
                    trainer.history.setdefault(f"val_{k}", []).append(metrics[k])
        return trainer.history

    def evaluate(self, x, y=None, sample_weight=None, batch_size=8):
        """{"loss", "accuracy", "perplexity", "tokens"} over the data (same kinds as `fit`); the loss
        uses the compiled reduction, accuracy is the weighted share of argmax hits."""
        from minibloom.training import train

        _, reduction = self._compiled()
        return train.evaluate(
            self, train.as_dataset(self, x, y, sample_weight), batch_size, reduction
        )

    # --- generation (generate.py, samplers.py) --------------------------------------------------

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        stream=False,
        *,
        max_new_tokens=None,
        min_new_tokens=None,
        repetition_penalty=None,
        no_repeat_ngram_size=None,
        bad_words_ids=None,
        suppress_tokens=None,
        stop_strings=None,
        num_return_sequences=None,
    ):
        """Continue prompts with the compiled sampler (greedy if `compile` was never called).

        Args:
            inputs: a string, a list of strings (batched; LEFT-padded as HF does), or, with or
                without a preprocessor, a dict {"token_ids", "padding_mask"} of (B, P) prompts
                padded on either side (right as keras-hub packs them, left as HF does, or with
                holes): each row continues its own real tokens, exactly as if it were alone.
            max_length: prompt + completion tokens (keras-hub and HF count the same way); default
                the preprocessor's sequence_length. For dict inputs without a preprocessor it may
                be omitted, as in keras-hub: the inputs are padded to the length wanted (their
                width) and the trailing padded positions are filled (rows of different prompt
                lengths still get the same number of new tokens, as in HF; keras-hub fills each
                row's own padding). Given, it counts as in HF (the input width included).
            stop_token_ids: "auto" (HF's rule: the generation config's eos ids, else the
                tokenizer's `</s>`, else none), None (run to max_length) or a tuple of ids. A row
                that stops is filled after its stop id with the generation config's pad id, else
                the tokenizer's `<pad>`, else the first stop id (HF pads with eos).
            strip_prompt: return only the completion.
            stream: return an iterator of text pieces instead (see `stream`).

        Generation controls, HF's names and semantics (minibloom/processors.py; equal to
        transformers `generate` token for token, tests/test_controls.py). Each one left None is
        read from the model's generation_config.json (HF's mechanism), else it is off:
            max_new_tokens: new tokens per row (overrides max_length: prompts are left-aligned to
                one width P, so max_length = P + max_new_tokens, whatever each row's padding).
            min_new_tokens: the stop ids are impossible before that many new tokens.
            repetition_penalty: > 0; ids already in the sequence (prompt included) get their
                logit divided by it when positive, multiplied when negative (1.0: off).
            no_repeat_ngram_size: no n-gram of that size occurs twice.
            bad_words_ids: list of lists of ids never completed; suppress_tokens: ids never made.
            stop_strings: a text or list of texts: a row stops once its text ends with one (HF's
                StopStringCriteria; multi-token texts; with beam search a candidate whose text ends
                with one is finished, as at a stop id).
            num_return_sequences: random samplers repeat each prompt n times; beam search returns
                its best n beams (n <= num_beams). The rows come prompt by prompt (B * n).

        Returns: a string (one prompt) or a list of strings, special tokens removed; for dict
        inputs the dict {"token_ids", "padding_mask"} (B, P + N) (plus "scores" for beam search),
        whose first P columns hold each prompt left-aligned (pads first) and whose mask marks
        the real tokens.
        With BeamSampler(return_all_beams=True): (texts per prompt per beam, scores).

        The default sampler is greedy, where keras-hub defaults to an unseeded top_k(5): greedy is
        reproducible and equals HF's default `generate`. See generate.py for the other places
        where we follow HF rather than keras-hub (padding side, no `<s>`, beam search).
        """
        from minibloom import generate as gen

        return gen.generate(
            self,
            inputs,
            max_length,
            stop_token_ids,
            strip_prompt,
            stream,
            getattr(self, "sampler", None),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            bad_words_ids=bad_words_ids,
            suppress_tokens=suppress_tokens,
            stop_strings=stop_strings,
            num_return_sequences=num_return_sequences,
        )

    def stream(
        self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False, **controls
    ):
        """Yield the text of one string prompt piece by piece as it is generated.

        Pieces never split a UTF-8 character and concatenate to what `generate` returns.
        `controls`: the generation controls of `generate` (max_new_tokens, ...).
        """
        from minibloom import generate as gen

        return gen.stream_text(
            self,
            inputs,
            max_length,
            stop_token_ids,
            strip_prompt,
            getattr(self, "sampler", None),
            **controls,
        )
