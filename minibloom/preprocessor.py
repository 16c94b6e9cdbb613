"""BloomCausalLMPreprocessor: raw strings -> the padded id arrays the model trains and generates on.

Training (`__call__`), as keras-hub's `CausalLMPreprocessor` does it: tokenize each string, pack
it to `sequence_length + 1` ids (truncate keeping the beginning, optional `<s>` in front,
optional `</s>` at the end, then RIGHT padding with `<pad>`), and shift by one:

    packed          (B, T+1)   [a, b, c, </s>, <pad>, <pad>]
    x.token_ids     (B, T)     packed[:, :-1]     [a, b, c, </s>, <pad>]
    x.padding_mask  (B, T)     mask[:, :-1]       [1, 1, 1, 1,    0]
    y               (B, T)     packed[:, 1:]      [b, c, </s>, <pad>, <pad>]
    sample_weight   (B, T)     mask[:, 1:]        [1, 1, 1,    0,     0]

Defaults follow BLOOM's pretraining convention, not keras-hub's: documents were fed without a
`<s>` in front and with `</s>` as the end-of-document marker, so `add_start_token=False`,
`add_end_token=True`. `add_start_token=True` reproduces keras-hub's `BloomCausalLMPreprocessor`
(which prepends `<s>` by default). HF's BLOOM tokenizer adds neither token.

Generation (`generate_preprocess` / `generate_postprocess`) follows HF by default: prompts are
LEFT-padded (so every row's last prompt token sits in the last column and new tokens are appended
on the right for all rows at once), no `</s>` is appended, and `<s>` is put in front only if
`add_start_token` is set. `padding_side="right"` packs prompts as keras-hub does (generate
continues each row's own tokens either way).

Packing exactly like keras-hub's `BloomCausalLMPreprocessor`: `add_start_token=True,
padding_side="right"` (what from_preset builds for a keras-hub preset, with its preprocessor.json).

Left out: tf.data / dataset mapping (see minibloom/training/data.py for streaming corpora), packing several
documents into one row (data.py does that for long texts), and tokenization itself (tokenizer.py).
"""

import numpy as np

from minibloom.errors import ArgumentError


def _as_text_list(x, name="x"):
    """A string or a list/tuple of strings -> (list of strings, was it a single string)."""
    if isinstance(x, str):
        return [x], True
    if isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x):
        return list(x), False
    raise ArgumentError(f"{name}: expected a string or a list of strings, found {type(x).__name__}")


class BloomCausalLMPreprocessor:
    """Tokenize and pack strings for BloomCausalLM (see the module docstring for the layout).

    Args:
        tokenizer: a `minibloom.tokenizer.BloomTokenizer` (anything with `encode(text) -> list[int]`,
            `decode(ids) -> str` and `start_token_id` / `end_token_id` / `pad_token_id`).
        sequence_length: T, the length of `x["token_ids"]` for training.
        add_start_token: put `<s>` in front of every string (keras-hub's default; not BLOOM's).
        add_end_token: append `</s>` after every string when training (BLOOM's end of document).
        padding_side: where `generate_preprocess` pads prompts: "left" (HF) or "right" (keras-hub).
            Training batches are always right-padded, as both libraries do.
    """

    def __init__(
        self,
        tokenizer,
        sequence_length=1024,
        add_start_token=False,
        add_end_token=True,
        padding_side="left",
    ):
        if not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
            raise ArgumentError(f"sequence_length: expected an int >= 1, found {sequence_length!r}")
        if padding_side not in ("left", "right"):
            raise ArgumentError(f"padding_side: expected 'left' or 'right', found {padding_side!r}")
        self.padding_side = padding_side
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.add_start_token = bool(add_start_token)
        self.add_end_token = bool(add_end_token)

    def get_config(self) -> dict:
        return {
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
            "padding_side": self.padding_side,
        }

    # --- packing --------------------------------------------------------------------------------

    def _pack(self, ids_list, length, add_end, left):
        """Pack id lists into (B, length) int64 ids and a bool mask; truncation keeps the beginning."""
        start = [self.tokenizer.start_token_id] if self.add_start_token else []
        end = [self.tokenizer.end_token_id] if add_end else []
        room = length - len(start) - len(end)
        if room < 0:
            raise ArgumentError(f"sequence_length {length} cannot hold the start/end tokens")
        ids = np.full(
            (len(ids_list), length), self.tokenizer.pad_token_id, dtype=np.int64
        )  # (B, length)
        mask = np.zeros((len(ids_list), length), dtype=bool)  # (B, length)
        for b, row in enumerate(ids_list):
            row = start + list(row[:room]) + end
            cols = slice(length - len(row), length) if left else slice(0, len(row))
            ids[b, cols] = row
            mask[b, cols] = True
        return ids, mask

    def __call__(self, x, y=None, sample_weight=None, sequence_length=None):
        """Strings -> (x={"token_ids", "padding_mask"}, y, sample_weight) for training.

        `y` and `sample_weight` must be None: they are made from `x` (keras-hub warns and ignores
        them; here passing them is an error so nothing is silently dropped).
        Returns token_ids (B, T) int64, padding_mask (B, T) bool, y (B, T) int64 and
        sample_weight (B, T) float32 (1.0 where y is a real target, 0.0 on padding).
        """
        if y is not None or sample_weight is not None:
            raise ArgumentError(
                "y / sample_weight: the preprocessor makes them from x; pass only x"
            )
        texts, _ = _as_text_list(x)
        T = self.sequence_length if sequence_length is None else int(sequence_length)
        ids, mask = self._pack(
            [self.tokenizer.encode(t) for t in texts], T + 1, self.add_end_token, left=False
        )
        # (B, T+1) -> inputs and targets, shifted by one position
        x_out = {"token_ids": ids[:, :-1].copy(), "padding_mask": mask[:, :-1].copy()}
        return x_out, ids[:, 1:].copy(), mask[:, 1:].astype(np.float32)

    def generate_preprocess(self, x, sequence_length=None):
        """Prompts -> {"token_ids": (B, T) int64, "padding_mask": (B, T) bool}, no `</s>`, padded on
        `padding_side` (LEFT by default).

        T is `sequence_length` if given (longer prompts are truncated keeping their beginning),
        else the longest prompt of the batch.
        """
        texts, _ = _as_text_list(x)
        ids_list = [self.tokenizer.encode(t) for t in texts]
        if sequence_length is None:
            sequence_length = max(len(r) for r in ids_list) + int(self.add_start_token)
        ids, mask = self._pack(
            ids_list,
            max(int(sequence_length), 1),
            add_end=False,
            left=self.padding_side == "left",
        )
        return {"token_ids": ids, "padding_mask": mask}

    def generate_postprocess(self, x):
        """{"token_ids", "padding_mask"} (B, T) or (T,) -> list of strings (or one string).

        Drops padded positions and the special ids (`<s>`, `</s>`, `<pad>`), then detokenizes.
        """
        ids = np.asarray(x["token_ids"])
        mask = np.asarray(x.get("padding_mask", np.ones(ids.shape, dtype=bool)), dtype=bool)
        single = ids.ndim == 1
        ids, mask = np.atleast_2d(ids), np.atleast_2d(mask)
        tok = self.tokenizer
        special = [tok.start_token_id, tok.end_token_id, tok.pad_token_id]
        keep = mask & ~np.isin(ids, special)  # (B, T)
        texts = [tok.decode([int(i) for i in row[k]]) for row, k in zip(ids, keep)]
        return texts[0] if single else texts
