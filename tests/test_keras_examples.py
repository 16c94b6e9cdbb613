"""Every example of keras-hub's `BloomCausalLM` docstring, verbatim, with `keras_hub` replaced by
`minibloom`.

`bloom_560m_multi` is a keras-hub download in a temporary kagglehub cache (the layout keras-hub
fills, `models/keras/bloom/keras/bloom_560m_multi/4/`): a small random BLOOM with BLOOM's 250880
embedding rows (the examples use ids up to 214064) and the golden tokenizer, written by
`save_to_preset(format="keras")`. The examples are kept here as keras-hub 0.32.0 prints them;
with keras-hub installed a test checks they still equal its docstring.

Two examples are broken in keras-hub 0.32.0 itself, and are run as follows:
  * "generate() without preprocessing" raises ValueError in keras-hub (`stop_token_ids="auto"`
    needs a preprocessor there); minibloom's "auto" falls back to the generation config's end
    token, as HF does, so it runs;
  * "custom backbone and vocabulary": its merges use tokens its vocabulary lacks, so keras-hub's
    BloomTokenizer raises ValueError at once; minibloom raises ValueError at the same line too
    (TokenizerError naming the merge), and the example then runs with the missing tokens added.
"""

import ast
import importlib.util
import os
import re
import textwrap

import numpy as np
import pytest
from conftest import golden_path

import minibloom
from minibloom.model import BloomBackbone
from minibloom.preprocessor import BloomCausalLMPreprocessor
from minibloom.tokenizer import BloomTokenizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None,
    reason="h5py not installed (pip install -e '.[keras]')",
)

EXAMPLES = [
    """\
bloom_lm = keras_hub.models.BloomCausalLM.from_preset("bloom_560m_multi")
bloom_lm.generate("I want to say", max_length=30)

# Generate with batched prompts.
bloom_lm.generate(["This is a", "Where are you"], max_length=30)
""",
    """\
bloom_lm = keras_hub.models.BloomCausalLM.from_preset("bloom_560m_multi")
bloom_lm.compile(sampler="top_k")
bloom_lm.generate("I want to say", max_length=30)

bloom_lm.compile(sampler=keras_hub.samplers.BeamSampler(num_beams=2))
bloom_lm.generate("I want to say", max_length=30)
""",
    """\
prompt = {
    # Token ids for "<s> Keras is".
    "token_ids": np.array([[1, 46, 15762, 632, 3, 3, 3, 3, 3]] * 2),
    # Use `"padding_mask"` to indicate values that should not be overridden.
    "padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0]] * 2),
}

bloom_lm = keras_hub.models.BloomCausalLM.from_preset(
    "bloom_560m_multi",
    preprocessor=None,
)
bloom_lm.generate(prompt)
""",
    """\
features = ["The quick brown fox jumped.", "I forgot my homework."]
bloom_lm = keras_hub.models.BloomCausalLM.from_preset("bloom_560m_multi")
bloom_lm.fit(x=features, batch_size=2)
""",
    """\
x = {
    # Token ids for "<bos> Keras is deep learning library<eos>"
    "token_ids": np.array([[2, 214064, 603, 5271, 6044, 9581, 1, 0]] * 2),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 0]] * 2),
}
y = np.array([[214064, 603, 5271, 6044, 9581, 3, 0, 0]] * 2)
sw = np.array([[1, 1, 1, 1, 1, 1, 0, 0]] * 2)

bloom_lm = keras_hub.models.BloomCausalLM.from_preset(
    "bloom_560m_multi",
    preprocessor=None,
)
bloom_lm.fit(x=x, y=y, sample_weight=sw, batch_size=2)
""",
    """\
features = [
    " airplane at airport",
    " airplane airport",
]
vocab = ["<unk>", "<s>", "</s>", "<pad>"]
vocab += ["!", "air", "Ġair", "plane", "Ġat", "port"]
vocab = dict([(token, i) for i, token in enumerate(vocab)])
merges = ["Ġ a", "Ġ t", "Ġ i", "Ġ b", "a i", "p l", "n e"]
merges += ["Ġa t", "p o", "r t", "Ġt h", "ai r", "pl a", "po rt"]
merges += ["Ġai r", "Ġa i", "pla ne"]
tokenizer = keras_hub.models.BloomTokenizer(vocabulary=vocab, merges=merges)
preprocessor = keras_hub.models.BloomCausalLMPreprocessor(
    tokenizer=tokenizer,
    sequence_length=128,
)
backbone = keras_hub.models.BloomBackbone(
    vocabulary_size=tokenizer.vocabulary_size(),
    num_layers=4,
    num_heads=4,
    hidden_dim=32,
    intermediate_dim=128,
)
bloom_lm = keras_hub.models.BloomCausalLM(
    backbone=backbone,
    preprocessor=preprocessor,
)
bloom_lm.fit(x=features, batch_size=2)
""",
]


@pytest.fixture(scope="module")
def kaggle_cache(tmp_path_factory):
    """A kagglehub cache holding a small keras-hub `bloom_560m_multi` (version 4, as keras-hub's
    handle), and empty minibloom / HF caches so that nothing else is found."""
    root = tmp_path_factory.mktemp("caches")
    env = {
        "KAGGLEHUB_CACHE": root / "kaggle",
        "MINIBLOOM_HOME": root / "home",
        "HF_HUB_CACHE": root / "hub",
    }
    tok = BloomTokenizer.from_file(golden_path("tokenizer.json"))
    backbone = BloomBackbone(250880, 1, 2, 8, seed=1)
    pre = BloomCausalLMPreprocessor(tok, sequence_length=16, add_start_token=True)
    lm = minibloom.BloomCausalLM(backbone, pre)
    lm.save_to_preset(
        env["KAGGLEHUB_CACHE"] / "models/keras/bloom/keras/bloom_560m_multi/4",
        format="keras",
        dtype="float16",
    )
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    yield env["KAGGLEHUB_CACHE"]
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_example(source):
    """exec the example with keras_hub replaced by minibloom; returns the value of every
    top-level expression statement, in order."""
    tree = ast.parse(source.replace("keras_hub", "minibloom"))
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.Expr):
            call = ast.parse("_results.append(None)").body[0]
            call.value.args = [node.value]
            tree.body[i] = ast.copy_location(call, node)
    ast.fix_missing_locations(tree)
    namespace = {"np": np, "minibloom": minibloom, "_results": []}
    exec(compile(tree, "<keras-hub example>", "exec"), namespace)
    return namespace["_results"], namespace


def test_generate_with_presets_and_batched_prompts(kaggle_cache):
    (one, batch), ns = run_example(EXAMPLES[0])
    assert isinstance(one, str) and one.startswith("I want to say")
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0].startswith("This is a") and batch[1].startswith("Where are you")
    assert ns["bloom_lm"].preprocessor.add_start_token  # keras-hub's packing for its preset


def test_compile_with_custom_samplers(kaggle_cache):
    results, ns = run_example(EXAMPLES[1])
    top_k, beam = (r for r in results if r is not None)  # compile() returns None
    assert top_k.startswith("I want to say") and beam.startswith("I want to say")
    assert isinstance(ns["bloom_lm"].sampler, minibloom.samplers.BeamSampler)


def test_generate_without_preprocessing(kaggle_cache):
    (out,), ns = run_example(EXAMPLES[2])
    ids, mask = out["token_ids"], out["padding_mask"]
    assert ids.shape == (2, 9)  # keras: the inputs are padded to the length wanted
    assert ids[:, :4].tolist() == [[1, 46, 15762, 632]] * 2  # the prompt, in place
    assert mask[:, :5].all()  # every padded position after the prompt was filled (until a stop)
    assert (ids[0] == ids[1]).all()  # greedy, equal rows


def test_fit_on_a_single_batch(kaggle_cache):
    (history,), _ = run_example(EXAMPLES[3])
    assert len(history["step_loss"]) == 1 and np.isfinite(history["loss"][0])


def test_fit_without_preprocessing(kaggle_cache):
    (history,), ns = run_example(EXAMPLES[4])
    assert len(history["step_loss"]) == 1 and np.isfinite(history["loss"][0])
    assert isinstance(ns["bloom_lm"].optimizer, minibloom.Adam)  # keras-hub's default Adam(2e-5)


def test_custom_backbone_and_vocabulary():
    # verbatim: raises at the tokenizer, as in keras-hub 0.32.0 (its merges use tokens its
    # vocabulary lacks)
    with pytest.raises(ValueError, match=r"merge 0 \('Ġ' 'a'\) uses 'Ġ'"):
        run_example(EXAMPLES[5])
    # with the missing tokens added to the vocabulary, the rest of the example runs
    fixed = EXAMPLES[5].replace(
        "tokenizer = keras_hub",
        "for m in merges:\n"
        "    for t in (*m.split(' '), m.replace(' ', '')):\n"
        "        vocab.setdefault(t, len(vocab))\n"
        "tokenizer = keras_hub",
    )
    (history,), ns = run_example(fixed)
    assert len(history["step_loss"]) == 1 and np.isfinite(history["loss"][0])
    assert ns["backbone"].config.n_layer == 4 and ns["backbone"].config.ffn_size == 128
    assert ns["tokenizer"].encode(" airplane at airport") == [6, 7, 8, 6, 9]


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("keras", "keras_hub", "torch")),
    reason="keras-hub not installed (pip install --no-deps keras keras-hub, see .ci/run)",
)
def test_examples_are_keras_hubs_docstring_verbatim():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras_hub

    doc = keras_hub.models.BloomCausalLM.__doc__
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", doc, re.S)]
    assert blocks == EXAMPLES
    # and keras-hub's own custom-vocabulary example fails in keras-hub too
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", "!", "air"])}
    with pytest.raises(ValueError, match="not in the vocabulary"):
        keras_hub.models.BloomTokenizer(vocabulary=vocab, merges=["Ġ a"])
