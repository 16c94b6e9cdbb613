"""BloomCausalLM: the task object users hold, shaped like keras-hub's `BloomCausalLM`.

It owns a `BloomBackbone` (the transformer, model.py) and an optional
`BloomCausalLMPreprocessor` (tokenizer + packing, preprocessor.py), and exposes:
construction and checkpoints (`from_preset`, `save_to_preset`), the forward pass (`predict`),
the loss and its gradients (`loss_and_grads`), training (`compile`, `fit`, `evaluate`) and text
generation (`generate`, `stream`). The methods are thin: the work happens in the module named
in each section, so each of those reads on its own.

The LM head is tied: logits = final hidden states @ word_embeddings.weight.T, no bias.
"""


class BloomCausalLM:
    """A BLOOM language model with its (optional) preprocessor.

    Args:
        backbone: a `minibloom.model.BloomBackbone`.
        preprocessor: a `minibloom.preprocessor.BloomCausalLMPreprocessor`, or None to work on
            token ids only (`{"token_ids", "padding_mask"}` dicts).
    """

    def __init__(self, backbone, preprocessor=None):
        self.backbone = backbone
        self.preprocessor = preprocessor

    @property
    def params(self):
        """The backbone's parameters: dict of float32 arrays keyed by HF names (no `transformer.`)."""
        return self.backbone.params

    @property
    def tokenizer(self):
        return None if self.preprocessor is None else self.preprocessor.tokenizer

    # --- construction and checkpoints (presets.py, checkpoint.py) -------------------------------

    # --- forward, loss and gradients (model.py, losses.py) --------------------------------------

    # --- training (train.py, optim.py) ----------------------------------------------------------

    # --- generation (generate.py, samplers.py) --------------------------------------------------
