"""BloomTokenizer: BLOOM's byte-level BPE tokenizer, id-for-id equal to HF `tokenizers`.

Covers loading and saving the two file formats (HF `tokenizer.json`; keras-hub's
`vocabulary.json` + `merges.txt`), checking that a file describes BLOOM's pipeline, added/special
token matching, encode and decode, and the reference of the two steps that do the work: BLOOM's
pre-tokenizer (`split_pieces`, the Split regex) and the BPE merge loop (`bpe_merge`,
`encode_texts`). Their fast twin, one compiled pass over the bytes of a whole batch, is
minibloom/kernels/bpe.py (same ids, chosen by minibloom.dispatch); the trainer is
minibloom/training/bpe_train.py.

Encoding, in HF's order (bloom-spec.md §4):

1. Added tokens are cut out of the raw text first, leftmost-longest, in two passes like HF: the
   tokens whose `normalized` flag is false (BLOOM's specials `<unk> <s> </s> <pad>`), then, in the
   text between those, the tokens with `normalized` true. (BLOOM has no normalizer, so the flag
   only decides the pass.) An added token matches anywhere, even inside a word.
2. Every stretch of text between added tokens goes through `encode_texts`: the Split regex
   (Isolated), ByteLevel without regex, BPE by merge rank (below).
3. Nothing is added around the ids: BLOOM's post-processor adds no BOS/EOS.

Decoding maps every id to its token string (added tokens included; `skip_special_tokens` drops
the special ones), turns each character back into its byte with the GPT-2 byte<->unicode map (a
character outside the map stands for its own UTF-8 bytes, as in HF) and decodes the bytes as
UTF-8 with U+FFFD for invalid sequences. Ids at or above the number of tokens decode to nothing:
BLOOM's embedding has 250880 rows but only 250680 tokens, and a model may sample an unused row.

Not supported (rejected with a TokenizerError that says which part differs): normalizers, other
pre-tokenizers or regexes, `add_prefix_space`, BPE dropout / unk fallback / `ignore_merges` /
subword prefixes, post-processors that add tokens, truncation and padding settings, added tokens
with `single_word`, `lstrip` or `rstrip`. Offsets are not computed.
"""

import json
from pathlib import Path

import numpy as np
import regex

from minibloom.dispatch import fast_or_reference
from minibloom.errors import ArgumentError, PresetNotFoundError, TokenizerError
from minibloom.io.files import read_json_file

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # BLOOM's ids 0, 1, 2, 3
KERAS_REQUIRED = ("<s>", "</s>", "<pad>")  # keras-hub's BloomTokenizer: start, end and pad token
_MAX_ID_SPREAD = 4  # ids may leave holes, but the largest id stays below 4 x tokens + 1024


# ------------------------------------------------------------------------------------------------
# BLOOM's pre-tokenizer: Split (behaviour "Isolated") on one regex
# ------------------------------------------------------------------------------------------------

# The regex exactly as BLOOM's tokenizer.json spells it (Oniguruma syntax). Oniguruma reads the
# nested class as "not one of: ( ) | whitespace . , ! ? … 。 ， 、 । ۔ ،". Every match is a piece
# and every gap between two matches is ONE piece too (gaps are never split further).
BLOOM_SPLIT_REGEX = " ?[^(\\s|[.,!?…。，、।۔،])]+"

# Oniguruma's \s in Unicode mode: the White_Space property (checked against `tokenizers` for
# every code point: U+001C-001F, U+180E and U+200B are NOT in it; U+0085 and U+00A0 are).
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# Every character that cannot be part of a "word" run: the nested class flattened.
SPLIT_EXCLUDED = "()|" + WHITESPACE + ".,!?…。，、।۔،"

# The same class as a flat Python-`regex` pattern (the nested form does not compile in regex's
# default mode, and `\s` would be Python's). Written out character by character with escapes.
_SPLIT_PATTERN = regex.compile(" ?[^" + "".join(f"\\u{ord(c):04x}" for c in SPLIT_EXCLUDED) + "]+")


def split_pieces(text: str) -> list:
    """BLOOM's pre-tokenizer: the pieces of `text` (matches and the gaps between them, in order).

    >>> split_pieces("Hello  world... (x)")
    ['Hello', ' ', ' world', '... (', 'x', ')']
    """
    pieces, gap_start = [], 0
    for m in _SPLIT_PATTERN.finditer(text):
        if m.start() > gap_start:
            pieces.append(text[gap_start : m.start()])  # the gap before this match: one piece
        pieces.append(m.group())
        gap_start = m.end()
    if gap_start < len(text):
        pieces.append(text[gap_start:])
    return pieces


# ------------------------------------------------------------------------------------------------
# BPE: merge the adjacent pair of lowest rank until none is left
# ------------------------------------------------------------------------------------------------

TEXT_SEPARATOR = (
    0xFF  # joins the texts of a batch: never occurs in UTF-8, so nothing matches across it
)


class BpeModel:
    """The merges in the form encoding needs, built once per tokenizer.

    byte_ids: int64 (256,) id of the one-byte token of each byte, -1 if the vocab lacks it (HF then
        drops that byte silently; BLOOM's vocab has all 256).
    merges: {(left_id, right_id): (rank, merged_id)}; a pair listed twice keeps its last rank, as HF.
    fast: None, or the fast twin's packed tables (kernels/bpe.py builds them on first use).
    """

    __slots__ = ("byte_ids", "merges", "fast")

    def __init__(self, byte_ids, merges):
        self.byte_ids, self.merges, self.fast = byte_ids, merges, None


def bpe_merge(symbols: list, merges: dict) -> list:
    """Merge a piece's symbols (token ids) by rank: lowest rank first, leftmost on ties."""
    while len(symbols) > 1:
        best_rank, best_i, best_id = None, -1, -1
        for i in range(len(symbols) - 1):
            hit = merges.get((symbols[i], symbols[i + 1]))
            if hit is not None and (best_rank is None or hit[0] < best_rank):
                best_rank, best_i, best_id = hit[0], i, hit[1]
        if best_rank is None:
            break
        symbols[best_i : best_i + 2] = [best_id]
    return symbols


def _encode_ordinary(text: str, model: BpeModel, cache: dict) -> list:
    """Ids of one text without added tokens; cache maps piece -> its ids (pieces repeat a lot)."""
    ids = []
    byte_ids = model.byte_ids.tolist()
    for piece in split_pieces(text):
        hit = cache.get(piece)
        if hit is None:
            symbols = [byte_ids[b] for b in piece.encode("utf-8")]  # ByteLevel: one symbol per byte
            hit = cache[piece] = bpe_merge([s for s in symbols if s >= 0], model.merges)
        ids.extend(hit)
    return ids


def encode_texts(data: bytes, fixed: np.ndarray, model: BpeModel) -> list:
    """Token ids of the UTF-8 texts in data, one list per text.

    data: the texts' UTF-8 bytes joined by TEXT_SEPARATOR bytes (one text: no separator).
    fixed: int64 (K, 3) rows (start, stop, id), sorted, not overlapping and not crossing a
        separator: byte spans that are already a token (the caller's added tokens). They become
        that id; the text between them is split and BPE-merged.
    """
    cache, texts, ids, p = {}, [], [], 0
    for start, stop, token_id in fixed.tolist() + [(len(data), len(data), None)]:
        for i, chunk in enumerate(data[p:start].split(bytes([TEXT_SEPARATOR]))):
            if i > 0:  # a separator: the text is complete
                texts.append(ids)
                ids = []
            ids.extend(_encode_ordinary(chunk.decode("utf-8"), model, cache))
        if token_id is not None:
            ids.append(token_id)
        p = stop
    texts.append(ids)
    return texts


# ------------------------------------------------------------------------------------------------
# the GPT-2 byte <-> unicode map (ByteLevel)
# ------------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict:
    """{byte: stand-in character}: printable bytes stand for themselves, the other 68 bytes
    (0-32, 127-160, 173) get U+0100, U+0101, ... in byte order (so space -> 'Ġ', '\\n' -> 'Ċ')."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(0xA1, 0xAC + 1))
        + list(range(0xAE, 0xFF + 1))
    )
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _token_bytes(token: str, char_to_byte: dict) -> bytes:
    """The bytes a token string stands for (ByteLevel decoder)."""
    return b"".join(
        bytes([char_to_byte[c]]) if c in char_to_byte else c.encode("utf-8") for c in token
    )


# ------------------------------------------------------------------------------------------------
# atomic file writing
# ------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to path atomically and durably: checkpoint.py's temp file + fsync + rename."""
    from minibloom.io.files import write_bytes_atomic

    write_bytes_atomic(path, text.encode("utf-8"), error=TokenizerError)


# ------------------------------------------------------------------------------------------------
# the tokenizer
# ------------------------------------------------------------------------------------------------


class BloomTokenizer:
    """BLOOM's tokenizer. Build it with `from_file`, `from_preset`, `from_keras_assets`, or directly.

    Args (keras-hub's `BloomTokenizer(vocabulary=..., merges=...)`, plus two of our own):
        vocabulary: dict {token string: id} of the BPE model (byte-level strings, e.g. "Ġworld"),
            or the path of a keras-hub `vocabulary.json`.
        merges: list of merges, highest priority first: "a b" strings (keras-hub), (a, b) pairs,
            or the path of a `merges.txt`.
        added_tokens: list of dicts with at least "content" and "id", optionally "special"
            (default True) and "normalized" (default: not special), as in tokenizer.json.
            Default (None): the four BLOOM specials present in the vocabulary; then, as in
            keras-hub, `<s>`, `</s>` and `<pad>` must all be there (else TokenizerError, a
            ValueError, naming the missing ones).
        source: a name for error messages (usually the file the tokenizer came from).

    Attributes: `unk_token_id`, `start_token_id` (= `bos_token_id`), `end_token_id`
    (= `eos_token_id`), `pad_token_id`: the ids of `<unk> <s> </s> <pad>`, or None if absent.
    """

    def __init__(
        self, vocabulary=None, merges=None, added_tokens=None, source: str = "<in memory>"
    ):
        if isinstance(vocabulary, (str, Path)):
            source = source if source != "<in memory>" else Path(vocabulary).parent
            vocabulary = _read_vocabulary(Path(vocabulary))
        elif not isinstance(vocabulary, dict):
            raise ArgumentError(
                f"vocabulary: expected a dict {{token: id}} or a vocabulary.json path, found "
                f"{type(vocabulary).__name__}"
            )
        else:
            _check_vocab(vocabulary, source)
        if isinstance(merges, (str, Path)):
            merges = _read_merges(Path(merges))
        elif isinstance(merges, (list, tuple)):
            merges = [
                _merge_pair(m, f"merges[{n}]") if isinstance(m, str) else m
                for n, m in enumerate(merges)
            ]
        else:
            raise ArgumentError(
                f"merges: expected a list of 'a b' strings or a merges.txt path, found "
                f"{type(merges).__name__}"
            )
        vocab = vocabulary
        if added_tokens is None:
            absent = [t for t in KERAS_REQUIRED if t not in vocab]
            if absent:
                raise TokenizerError(
                    f"{source}: the vocabulary has no {', '.join(absent)}; BloomTokenizer needs its "
                    f"start, end and pad tokens <s>, </s> and <pad> (as keras-hub's does)"
                )
        self.source = str(source)
        self._vocab = dict(vocab)
        self._merges = [tuple(m) for m in merges]
        if added_tokens is None:
            added_tokens = [
                {"content": t, "id": vocab[t], "special": True}
                for t in SPECIAL_TOKENS
                if t in vocab
            ]
        self._added = [self._check_added(t) for t in added_tokens]

        # id -> token string over the model vocab and the added tokens.
        self._token_to_id = dict(self._vocab)
        for t in self._added:
            self._token_to_id[t["content"]] = t["id"]
        size = max(self._token_to_id.values(), default=-1) + 1
        if (
            size > _MAX_ID_SPREAD * len(self._token_to_id) + 1024
        ):  # refuse before allocating the table
            raise TokenizerError(
                f"{self.source}: largest id {size - 1} is far above the {len(self._token_to_id)} tokens; expected "
                f"ids below {_MAX_ID_SPREAD} x the number of tokens + 1024 (a corrupt or hostile file?)"
            )
        self._id_to_token = [None] * size
        for token, i in self._token_to_id.items():
            if self._id_to_token[i] is not None:
                raise TokenizerError(
                    f"{self.source}: id {i} is given to two tokens, {self._id_to_token[i]!r} and {token!r}"
                )
            self._id_to_token[i] = token
        self._special_ids = frozenset(t["id"] for t in self._added if t["special"])
        # ids below the largest one that no token has (generation never samples them)
        self.unused_ids = np.array(
            [i for i, t in enumerate(self._id_to_token) if t is None], np.int64
        )

        # Added-token matchers over UTF-8 bytes (a valid UTF-8 token can only match at character
        # boundaries), longest alternative first so that each match is leftmost-longest.
        def matcher(tokens):
            tokens = sorted((t.encode("utf-8") for t in tokens), key=len, reverse=True)
            return regex.compile(b"|".join(regex.escape(t) for t in tokens)) if tokens else None

        self._match_raw = matcher([t["content"] for t in self._added if not t["normalized"]])
        self._match_normalized = matcher([t["content"] for t in self._added if t["normalized"]])
        self._added_ids = {t["content"].encode("utf-8"): t["id"] for t in self._added}

        self._bpe = self._build_bpe()
        char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
        self._id_bytes = [
            b"" if t is None else _token_bytes(t, char_to_byte) for t in self._id_to_token
        ]

        self.unk_token_id = self._token_to_id.get("<unk>")
        self.start_token_id = self.bos_token_id = self._token_to_id.get("<s>")
        self.end_token_id = self.eos_token_id = self._token_to_id.get("</s>")
        self.pad_token_id = self._token_to_id.get("<pad>")

    def _check_added(self, token: dict) -> dict:
        where = f"{self.source}: added token {token.get('content')!r}"
        i = token.get("id")
        bad_id = isinstance(i, bool) or not isinstance(i, int) or i < 0
        if not isinstance(token.get("content"), str) or not token["content"] or bad_id:
            raise TokenizerError(
                f"{where}: expected a non-empty string 'content' and an integer 'id' >= 0, found {token}"
            )
        for flag in ("single_word", "lstrip", "rstrip"):
            if token.get(flag, False):
                raise TokenizerError(
                    f"{where}: '{flag}' is true; minibloom supports only false (as in BLOOM's file)"
                )
        content, i = token["content"], token["id"]
        if content in self._vocab and self._vocab[content] != i:
            raise TokenizerError(
                f"{where}: id {i} differs from its id {self._vocab[content]} in model.vocab"
            )
        special = bool(token.get("special", True))
        return {
            "content": content,
            "id": i,
            "special": special,
            "normalized": bool(token.get("normalized", not special)),
        }

    def _build_bpe(self) -> BpeModel:
        byte_ids = np.array(
            [self._vocab.get(c, -1) for c in bytes_to_unicode().values()], dtype=np.int64
        )
        merges = {}
        for rank, (a, b) in enumerate(self._merges):
            for part in (a, b, a + b):
                if part not in self._vocab:
                    raise TokenizerError(
                        f"{self.source}: merge {rank} ({a!r} {b!r}) uses {part!r}, which is not in model.vocab"
                    )
            merges[(self._vocab[a], self._vocab[b])] = (rank, self._vocab[a + b])
        return BpeModel(byte_ids, merges)

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path) -> "BloomTokenizer":
        """Load an HF `tokenizer.json`, checking that it describes BLOOM's pipeline."""
        path = Path(path)
        spec = read_json_file(path, TokenizerError, "tokenizer")
        vocab, merges, added = _parse_tokenizer_json(spec, path)
        return cls(vocab, merges, added, source=path)

    @classmethod
    def from_keras_assets(cls, vocabulary_path, merges_path) -> "BloomTokenizer":
        """Load keras-hub's `vocabulary.json` ({token: id}) and `merges.txt` (one "a b" per line).

        keras-hub registers only `<s> </s> <pad>` as unsplittable; minibloom registers all four
        BLOOM specials present in the vocabulary, so that the ids equal HF's (HF matches `<unk>` too).
        """
        vocabulary_path, merges_path = Path(vocabulary_path), Path(merges_path)
        vocab = _read_vocabulary(vocabulary_path)
        merges = _read_merges(merges_path)
        return cls(vocab, merges, None, source=vocabulary_path.parent)

    @classmethod
    def from_preset(cls, dir_or_name) -> "BloomTokenizer":
        """Load from a directory holding `tokenizer.json`, or keras-hub assets (`vocabulary.json` +
        `merges.txt`, directly or under `assets/tokenizer/`). Anything that is not a directory (a
        preset name, `hf://org/name`) is resolved to a model directory by `minibloom.io.presets.resolve`."""
        path = Path(dir_or_name).expanduser()
        if not path.is_dir():
            from minibloom.io.presets import resolve

            path = Path(resolve(str(dir_or_name)))
        assets_dirs = (path, path / "assets" / "tokenizer")
        keras = any(
            (a / "vocabulary.json").is_file() for a in assets_dirs
        ) and _is_keras_layer_config(path / "tokenizer.json")
        if (path / "tokenizer.json").is_file() and not keras:
            return cls.from_file(path / "tokenizer.json")
        for assets in assets_dirs:
            if (assets / "vocabulary.json").is_file() and (assets / "merges.txt").is_file():
                return cls.from_keras_assets(assets / "vocabulary.json", assets / "merges.txt")
        raise PresetNotFoundError(
            f"{path}: expected tokenizer.json, or vocabulary.json + merges.txt (keras-hub assets), found neither"
        )

    # --- saving --------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The HF `tokenizer.json` content: BLOOM's pipeline, merges as "a b" strings like BLOOM's file."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": t["id"],
                    "content": t["content"],
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": t["normalized"],
                    "special": t["special"],
                }
                for t in sorted(self._added, key=lambda t: t["id"])
            ],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": BLOOM_SPLIT_REGEX},
                        "behavior": "Isolated",
                        "invert": False,
                    },
                    {
                        "type": "ByteLevel",
                        "add_prefix_space": False,
                        "trim_offsets": True,
                        "use_regex": False,
                    },
                ],
            },
            "post_processor": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": False,
                "use_regex": False,
            },
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": False,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self._vocab,
                "merges": [f"{a} {b}" for a, b in self._merges],
            },
        }

    def to_json_string(self) -> str:
        """The text of an HF `tokenizer.json` for this tokenizer."""
        return json.dumps(self.to_json(), ensure_ascii=False, indent=None)

    def save(self, path) -> Path:
        """Write an HF `tokenizer.json` (atomically). `path` may be a file or a directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        _write_atomic(path, self.to_json_string())
        return path

    def keras_asset_texts(self) -> tuple:
        """The text of keras-hub's `vocabulary.json` and `merges.txt`, as keras-hub writes them
        (`json.dumps` of {token: id} with ASCII escapes; one "a b" line per merge, no header)."""
        return json.dumps(self._token_to_id), "".join(f"{a} {b}\n" for a, b in self._merges)

    def save_keras_assets(self, directory) -> tuple:
        """Write keras-hub's `vocabulary.json` and `merges.txt` into `directory` (atomically each)."""
        directory = Path(directory)
        vocab_path, merges_path = directory / "vocabulary.json", directory / "merges.txt"
        vocab_text, merges_text = self.keras_asset_texts()
        _write_atomic(vocab_path, vocab_text)
        _write_atomic(merges_path, merges_text)
        return vocab_path, merges_path

    # --- encoding ------------------------------------------------------------------------------

    def _find_added(self, data: bytes) -> np.ndarray:
        """int64 (K, 3) rows (start, stop, id): the added tokens in data, sorted by start.

        Two passes like HF: the raw (`normalized` false) tokens first, then the normalized ones in
        the gaps between those.
        """
        found = []
        if self._match_raw is not None:
            found = [
                (m.start(), m.end(), self._added_ids[m.group()])
                for m in self._match_raw.finditer(data)
            ]
        if self._match_normalized is not None:
            gap_starts = [0] + [stop for _, stop, _ in found]
            gap_stops = [start for start, _, _ in found] + [len(data)]
            for a, b in zip(gap_starts, gap_stops):
                found += [
                    (m.start(), m.end(), self._added_ids[m.group()])
                    for m in self._match_normalized.finditer(data, a, b)
                ]
            found.sort()
        return np.array(found, dtype=np.int64).reshape(-1, 3)  # (K, 3)

    def encode(self, text: str) -> list:
        """Token ids of `text` (no BOS/EOS added, as in HF for BLOOM)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts) -> list:
        """`encode` over a list of strings, all in one call of the BPE kernel.

        The texts go to the kernel as one UTF-8 buffer, joined by a byte that never occurs in
        UTF-8 (so neither an added token nor a piece can reach across two texts).
        """
        if isinstance(texts, str):
            raise ArgumentError(
                "encode_batch: texts must be a list of str, found a single str (use encode)"
            )
        encoded = []
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise ArgumentError(f"encode: text {n} must be a str, found {type(text).__name__}")
            try:
                encoded.append(text.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise ArgumentError(
                    f"encode: text {n} is not valid Unicode (lone surrogate at index {e.start})"
                ) from None
        if not encoded:
            return []
        data = encoded[0] if len(encoded) == 1 else bytes([TEXT_SEPARATOR]).join(encoded)
        return fast_or_reference(encode_texts)(data, self._find_added(data), self._bpe)

    def tokenize(self, text):
        """keras-hub name: ids of a string, or a list of id lists for a list of strings."""
        return self.encode(text) if isinstance(text, str) else self.encode_batch(text)

    __call__ = tokenize

    def pieces(self, text: str) -> list:
        """The token strings of `text` (byte-level spelling, e.g. 'Ġworld'), like HF's `tokens`."""
        return [self._id_to_token[i] for i in self.encode(text)]

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids. Ids >= `vocabulary_size()` decode to nothing (see module doc)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ArgumentError(
                f"decode: ids must be a 1-D sequence of integers, found shape {ids.shape} dtype {ids.dtype}"
            )
        if ids.size and ids.min() < 0:
            raise ArgumentError(f"decode: ids must be >= 0, found {int(ids.min())}")
        table, size = self._id_bytes, len(self._id_bytes)
        skip = self._special_ids if skip_special_tokens else ()
        data = b"".join(table[i] for i in ids.tolist() if i < size and i not in skip)
        return data.decode("utf-8", errors="replace")

    def decode_batch(self, batch, skip_special_tokens: bool = False) -> list:
        """`decode` over a list of id sequences (or a 2-D array)."""
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def detokenize(self, ids):
        """keras-hub name: text of one id sequence, or a list of texts for a batch (2-D)."""
        if len(ids) and np.ndim(ids[0]) == 1:
            return self.decode_batch(ids)
        return self.decode(ids)

    # --- vocabulary ----------------------------------------------------------------------------

    def vocabulary_size(self) -> int:
        """Number of ids (max id + 1, added tokens included): 250680 for BLOOM."""
        return len(self._id_to_token)

    def get_vocabulary(self) -> list:
        """Token strings by id (None for an unused id)."""
        return list(self._id_to_token)

    def id_to_token(self, token_id: int):
        """Token string of an id, or None when the id is not a token (HF returns None too)."""
        if not 0 <= int(token_id) < len(self._id_to_token):
            return None
        return self._id_to_token[int(token_id)]

    def token_to_id(self, token: str):
        """Id of a token string (byte-level spelling, or an added token's content), or None."""
        return self._token_to_id.get(token)

    def __repr__(self):
        return f"BloomTokenizer({self.vocabulary_size()} tokens, {len(self._merges)} merges, from {self.source})"


def default_tokenizer_path() -> Path:
    """tokenizer.json of the project's default model (`minibloom.io.presets.default_model_dir()`, the
    model shipped under weights/). Used by the CLI when no --tokenizer is given."""
    from minibloom.io.presets import default_model_dir

    try:
        directory = default_model_dir()
    except PresetNotFoundError as e:
        raise TokenizerError(
            f"no tokenizer given and no default model ({e}); pass --tokenizer PATH"
        ) from None
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(
            f"no tokenizer given and the default model {directory} has no tokenizer.json; pass --tokenizer PATH"
        )
    return path


# ------------------------------------------------------------------------------------------------
# tokenizer.json validation
# ------------------------------------------------------------------------------------------------


def _check_vocab(vocab, path) -> None:
    if not isinstance(vocab, dict):
        raise TokenizerError(
            f"{path}: vocab must be an object {{token string: id >= 0}}, found {type(vocab).__name__}"
        )
    for k, v in vocab.items():
        if not k or isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TokenizerError(
                f"{path}: vocab must map non-empty token strings to ids >= 0, found {k!r:.50}: {v!r:.50}"
            )
    if len(set(vocab.values())) != len(vocab):
        seen = {}
        for k, v in vocab.items():
            if v in seen:
                raise TokenizerError(
                    f"{path}: vocab maps two tokens to the same id {v}: {seen[v]!r} and {k!r}"
                )
            seen[v] = k


def _is_keras_layer_config(path: Path) -> bool:
    """True if `path` is keras-hub's tokenizer.json (a layer config: {"class_name", "config"}),
    which names the assets beside it, rather than an HF tokenizer.json."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(spec, dict) and "class_name" in spec and "model" not in spec


def _not_regular(p: Path) -> None:
    if p.exists() and not p.is_file():  # a directory, or a pipe that would block the read
        raise TokenizerError(f"{p}: not a regular file; expected keras-hub tokenizer assets")


def _read_vocabulary(path: Path) -> dict:
    """keras-hub's vocabulary.json: {token: id}, checked."""
    vocab = read_json_file(path, TokenizerError, "keras-hub vocabulary")
    _check_vocab(vocab, path)
    return vocab


def _merge_pair(line: str, where: str) -> tuple:
    parts = line.split(" ")
    if len(parts) != 2 or not all(parts):
        raise TokenizerError(f"{where}: expected two tokens separated by one space, found {line!r}")
    return tuple(parts)


def _read_merges(path: Path) -> list:
    """keras-hub's merges.txt (or HF's, with its `#version` header): [(a, b), ...]."""
    _not_regular(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not a readable merges file ({e})") from None
    return [
        _merge_pair(line, f"{path}, line {n}")
        for n, line in enumerate(lines, 1)
        if line and not line.startswith("#version")
    ]


def _differs(path, part: str, expected: str, found) -> TokenizerError:
    return TokenizerError(
        f"{path}: not BLOOM's pipeline: {part} should be {expected}, found {json.dumps(found, ensure_ascii=False)}"
    )


def _parse_tokenizer_json(spec, path):
    """Check every part of a tokenizer.json against BLOOM's pipeline; return (vocab, merges, added)."""
    if not isinstance(spec, dict) or "model" not in spec:
        raise TokenizerError(f"{path}: not an HF tokenizer.json (no 'model' key)")
    for key in ("truncation", "padding"):
        if spec.get(key) is not None:
            raise _differs(
                path, key, "null (minibloom does not truncate or pad in the tokenizer)", spec[key]
            )
    if spec.get("normalizer") is not None:
        raise _differs(path, "normalizer", "null", spec["normalizer"])

    pre = spec.get("pre_tokenizer")
    expected_pre = f'Sequence[Split(Regex "{BLOOM_SPLIT_REGEX}", Isolated), ByteLevel(add_prefix_space=false, use_regex=false)]'
    steps = (
        pre.get("pretokenizers")
        if isinstance(pre, dict) and pre.get("type") == "Sequence"
        else None
    )
    if (
        not isinstance(steps, list)
        or len(steps) != 2
        or not all(isinstance(s, dict) for s in steps)
    ):
        raise _differs(path, "pre_tokenizer", expected_pre, pre)
    split, byte_level = steps
    if (
        split.get("type") != "Split"
        or split.get("pattern") != {"Regex": BLOOM_SPLIT_REGEX}
        or split.get("behavior") != "Isolated"
        or split.get("invert", False)
    ):
        raise _differs(
            path,
            "pre_tokenizer's Split",
            f'Split(Regex "{BLOOM_SPLIT_REGEX}", behavior Isolated, invert false)',
            split,
        )
    if (
        byte_level.get("type") != "ByteLevel"
        or byte_level.get("add_prefix_space")
        or byte_level.get("use_regex", True)
    ):
        raise _differs(
            path,
            "pre_tokenizer's ByteLevel",
            "ByteLevel(add_prefix_space=false, use_regex=false)",
            byte_level,
        )

    post = spec.get("post_processor")
    if post is not None and (not isinstance(post, dict) or post.get("type") != "ByteLevel"):
        raise _differs(path, "post_processor", "null or ByteLevel (BLOOM adds no tokens)", post)
    decoder = spec.get("decoder")
    if not isinstance(decoder, dict) or decoder.get("type") != "ByteLevel":
        raise _differs(path, "decoder", "ByteLevel", decoder)

    model = spec["model"]
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        raise _differs(
            path, "model", "BPE", model.get("type") if isinstance(model, dict) else model
        )
    if model.get("dropout") not in (None, 0, 0.0):
        raise _differs(path, "model.dropout", "null", model["dropout"])
    for key, ok in (
        ("continuing_subword_prefix", None),
        ("end_of_word_suffix", None),
        ("byte_fallback", False),
        ("ignore_merges", False),
    ):
        if model.get(key) not in (ok, None, "", False):
            raise _differs(path, f"model.{key}", json.dumps(ok), model[key])
    vocab = model.get("vocab")
    _check_vocab(vocab, path)
    if model.get("unk_token") is not None and any(
        c not in vocab for c in bytes_to_unicode().values()
    ):
        raise _differs(
            path,
            "model.unk_token",
            "null (or a vocab holding all 256 byte tokens, so it is never used)",
            model["unk_token"],
        )

    merges = []
    if not isinstance(model.get("merges") or [], list):
        raise TokenizerError(
            f"{path}: model.merges should be a list of merges, found {type(model['merges']).__name__}"
        )
    for rank, m in enumerate(model.get("merges") or []):
        if isinstance(m, str) and len(m.split(" ")) == 2:
            merges.append(tuple(m.split(" ")))
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            merges.append(tuple(m))
        else:
            raise TokenizerError(
                f'{path}: model.merges[{rank}] should be "a b" or ["a", "b"], found {json.dumps(m, ensure_ascii=False)}'
            )

    added = spec.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(t, dict) for t in added):
        raise TokenizerError(f"{path}: added_tokens should be a list of objects")
    return vocab, merges, added
