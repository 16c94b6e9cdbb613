"""Golden part "keras": keras-hub as a second reference, on keras' torch backend (no tensorflow).

Run in a keras-hub environment:

    pip install --no-deps keras keras-hub
    pip install absl-py namex h5py optree ml-dtypes kagglehub rich
    KERAS_BACKEND=torch python tools/make_golden.py keras

It writes into `keras/`:

    preset/          keras-hub's own `BloomCausalLM.save_to_preset` of a tiny BLOOM (V from the
                     docstring vocabulary below, C=16, H=4, L=2) with random non-trivial weights
    after_step/      `BloomBackbone.save_to_preset` of the same model after ONE default
                     `train_on_batch` (compile defaults: Adam(2e-5), sparse cross-entropy with
                     "sum_over_batch_size"): the loss, its gradients and keras' Adam together
    cases.npz        the padded batch (right padding, as keras-hub packs) and keras-hub's logits on
                     it; the train batch x / y / sample_weight and keras' loss on it
    adam.npz         keras.optimizers.Adam alone, applied 3 times to random variables with random
                     gradients whose magnitudes span 1e-9 .. 1 (where epsilon's placement shows),
                     for lr 2e-5 (keras-hub's default) and 1e-2
    preprocess.json  keras-hub's BloomCausalLMPreprocessor ids (training: x, padding_mask, y,
                     sample_weight; and generate_preprocess) for a few strings, with the
                     tokenizer of tests/golden/tokenizer.json (the "tokenizer" part) as keras-hub's
                     BloomTokenizer(vocabulary=..., merges=...)
    meta.json        versions, sizes

`fit` needs tensorflow or grain for keras' input pipeline; `train_on_batch` does not, so the
training step is taken with `train_on_batch` on numpy arrays.

The vocabulary is keras-hub's docstring example with every token its merges use added (the
docstring's own list lacks them and raises ValueError in keras-hub 0.32.0; see
tests/test_keras_examples.py).
"""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

B, T = 3, 8
STRINGS = [
    "The quick brown fox jumped.",
    "I forgot my homework.",
    " airplane at airport",
    "Ça va? 東京 — multilingual, with   spaces\tand\nnewlines",
    "",
]
SEQUENCE_LENGTH = 12


def docstring_vocabulary():
    """keras-hub's BloomCausalLM docstring vocabulary and merges, with the merged tokens added."""
    vocab = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab += ["!", "air", "Ġair", "plane", "Ġat", "port"]
    vocab = dict([(token, i) for i, token in enumerate(vocab)])
    merges = ["Ġ a", "Ġ t", "Ġ i", "Ġ b", "a i", "p l", "n e"]
    merges += ["Ġa t", "p o", "r t", "Ġt h", "ai r", "pl a", "po rt"]
    merges += ["Ġai r", "Ġa i", "pla ne"]
    for m in merges:
        a, b = m.split(" ")
        for t in (a, b, a + b):
            vocab.setdefault(t, len(vocab))
    return vocab, merges


def _randomize(backbone, rng):
    import numpy as np

    for w in backbone.weights:
        shape, path = tuple(w.shape), w.path
        if "gamma" in path:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif "bias" in path or "beta" in path:
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = 0.5 * rng.standard_normal(shape)
        w.assign(value.astype(np.float32))


def _numpy(x):
    import numpy as np

    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)


def make(out_dir: Path) -> None:
    import keras
    import keras_hub
    import numpy as np

    if keras.backend.backend() != "torch":
        raise SystemExit("golden part keras: run with KERAS_BACKEND=torch")
    out = out_dir / "keras"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(12)

    # --- a tiny preset with random weights, saved by keras-hub ----------------------------------
    vocab, merges = docstring_vocabulary()
    tokenizer = keras_hub.models.BloomTokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.BloomCausalLMPreprocessor(tokenizer, sequence_length=T)
    backbone = keras_hub.models.BloomBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=4,
        hidden_dim=16,
        intermediate_dim=64,
    )
    _randomize(backbone, rng)
    lm = keras_hub.models.BloomCausalLM(backbone=backbone, preprocessor=preprocessor)
    lm.save_to_preset(str(out / "preset"))

    # --- logits on a right-padded batch ---------------------------------------------------------
    V = tokenizer.vocabulary_size()
    lengths = [T, 5, 2]
    ids = np.full((B, T), tokenizer.pad_token_id, dtype=np.int32)
    mask = np.zeros((B, T), dtype=bool)
    for b, n in enumerate(lengths):
        ids[b, 0] = tokenizer.start_token_id
        ids[b, 1:n] = rng.integers(4, V, size=n - 1)
        mask[b, :n] = True
    logits = _numpy(
        backbone.token_embedding(backbone({"token_ids": ids, "padding_mask": mask}), reverse=True)
    )
    logits_task = _numpy(lm({"token_ids": ids, "padding_mask": mask}))
    assert np.array_equal(logits, logits_task)

    # --- one default train_on_batch -------------------------------------------------------------
    y = np.concatenate([ids[:, 1:], np.full((B, 1), tokenizer.pad_token_id, np.int32)], axis=1)
    sw = np.concatenate([mask[:, 1:], np.zeros((B, 1), bool)], axis=1).astype(np.float32)
    train_lm = keras_hub.models.BloomCausalLM(
        backbone=backbone, preprocessor=None
    )  # compile defaults
    opt = train_lm.optimizer.get_config()
    assert opt["epsilon"] == 1e-7 and abs(opt["learning_rate"] - 2e-5) < 1e-12, opt
    loss = train_lm.train_on_batch({"token_ids": ids, "padding_mask": mask}, y, sample_weight=sw)
    backbone.save_to_preset(str(out / "after_step"))

    np.savez_compressed(
        out / "cases.npz",
        token_ids=ids,
        padding_mask=mask,
        logits=logits.astype(np.float32),
        y=y,
        sample_weight=sw,
        train_loss=np.float64(loss[0] if isinstance(loss, (list, tuple)) else loss),
    )

    # --- keras Adam alone -----------------------------------------------------------------------
    shapes = {"a": (13, 7), "b": (29,)}
    p0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {
            k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-9, 0, size=s)).astype(np.float32)
            for k, s in shapes.items()
        }
        for _ in range(3)
    ]
    adam = {f"p0.{k}": v for k, v in p0.items()}
    for t, g in enumerate(grads):
        adam.update({f"g{t}.{k}": v for k, v in g.items()})
    for lr in (2e-5, 1e-2):
        variables = [keras.Variable(p0[k].copy()) for k in shapes]
        optimizer = keras.optimizers.Adam(lr)
        for g in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g[k]) for k in shapes], variables)
        for k, v in zip(shapes, variables):
            adam[f"lr{lr:g}.{k}"] = _numpy(v.value)
    np.savez_compressed(out / "adam.npz", **adam)

    # --- keras-hub's preprocessing ids ----------------------------------------------------------
    spec = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))
    big = keras_hub.models.BloomTokenizer(
        vocabulary=spec["model"]["vocab"],
        merges=[m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]],
    )
    pre = keras_hub.models.BloomCausalLMPreprocessor(big, sequence_length=SEQUENCE_LENGTH)
    x, yy, ww = pre(STRINGS)
    gen = pre.generate_preprocess(STRINGS[:3], sequence_length=SEQUENCE_LENGTH)
    cases = {
        "strings": STRINGS,
        "sequence_length": SEQUENCE_LENGTH,
        "tokenize": [_numpy(big(s)).tolist() for s in STRINGS],
        "token_ids": _numpy(x["token_ids"]).tolist(),
        "padding_mask": _numpy(x["padding_mask"]).astype(int).tolist(),
        "y": _numpy(yy).tolist(),
        "sample_weight": _numpy(ww).astype(float).tolist(),
        "generate_token_ids": _numpy(gen["token_ids"]).tolist(),
        "generate_padding_mask": _numpy(gen["padding_mask"]).astype(int).tolist(),
    }
    (out / "preprocess.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")

    import torch

    meta = {
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "backend": keras.backend.backend(),
        "torch": torch.__version__,
        "vocabulary_size": V,
        "lengths": lengths,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(out_dir)}  {p.stat().st_size} bytes")
