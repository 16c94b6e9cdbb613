"""train_tokenizer(): learn byte-level BPE merges and return a BLOOM-pipeline BloomTokenizer.

Covers the classic BPE training loop (Sennrich et al. 2016, byte-level as in GPT-2) on BLOOM's
pre-tokenizer: the result has BLOOM's pipeline and `<unk> <s> </s> <pad>` as ids 0-3, so HF
`tokenizers` loads its tokenizer.json and encodes exactly like minibloom. Leaves out everything HF's
trainer does beyond that (it is not reproduced merge for merge: ties are broken differently, and
there is no `limit_alphabet`, no continuing-subword prefix, no progress bar).

The algorithm, kept fast enough for ~8 MB of text in well under a minute:

1. Split every text into added-token-free stretches (special tokens are cut out, as in encoding),
   then into pre-token pieces, and count the UNIQUE pieces (a word seen 10,000 times is one entry
   with weight 10,000).
2. Each piece starts as its UTF-8 bytes (symbol ids 4..259). Count every adjacent symbol pair,
   weighted, and remember which pieces contain each pair.
3. Repeat until the vocabulary is full: take the most frequent pair (ties: the pair whose ids are
   smallest, i.e. made earliest), give it a new id, and rewrite only the pieces that contain it,
   subtracting their old pair counts and adding the new ones. A max-heap with lazy deletion finds
   the best pair; stale heap entries are skipped when their count no longer matches.
"""

import heapq
from collections import Counter, defaultdict

import regex

from minibloom.errors import ArgumentError
from minibloom.tokenizer import SPECIAL_TOKENS, BloomTokenizer, bytes_to_unicode, split_pieces


def read_training_texts(paths) -> list:
    """The documents of corpus files, read as `train` reads them (`minibloom.training.data.iter_documents`:
    plain text split at blank lines, the "text" field of each JSON line, .xz / .gz of either).
    Each document is pre-tokenized on its own, so no piece spans two documents."""
    from minibloom.arguments import check_input_file
    from minibloom.training.data import iter_documents

    if isinstance(paths, (str, bytes)) or not hasattr(paths, "__iter__"):
        paths = [paths]
    return [doc for path in paths for doc in iter_documents(check_input_file("data", path))]


def count_pieces(texts, special_tokens=SPECIAL_TOKENS) -> Counter:
    """Counter {piece: occurrences} over all texts, special tokens cut out first."""
    specials = regex.compile(
        "|".join(regex.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
    )
    counts = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise ArgumentError(
                f"train_tokenizer: texts must be strings, found {type(text).__name__}"
            )
        for stretch in specials.split(text) if special_tokens else [text]:
            counts.update(split_pieces(stretch))
    return counts


def train_tokenizer(
    texts, vocab_size: int, special_tokens=SPECIAL_TOKENS, min_frequency: int = 2
) -> BloomTokenizer:
    """Train BPE merges on `texts` (an iterable of str) and return a BloomTokenizer.

    Args:
        texts: training text; each string is pre-tokenized on its own.
        vocab_size: total number of ids, special tokens and the 256 byte tokens included.
        special_tokens: added tokens given ids 0, 1, ... (default BLOOM's `<unk> <s> </s> <pad>`).
        min_frequency: stop early when the best pair occurs fewer times than this.

    Save the result with `.save(path)` (tokenizer.json) or `.save_keras_assets(dir)`.
    """
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ArgumentError(f"train_tokenizer: special_tokens has duplicates: {special_tokens}")
    from minibloom.arguments import check_int

    vocab_size = check_int(
        "vocab_size (special tokens + 256 bytes + merges)", vocab_size, lo=len(special_tokens) + 256
    )
    min_frequency = check_int("min_frequency", min_frequency, lo=1)

    # Vocabulary: specials, then the byte tokens in byte order, then one token per new merge.
    byte_char = bytes_to_unicode()
    tokens = list(special_tokens) + [byte_char[b] for b in range(256)]
    token_ids = {t: i for i, t in enumerate(tokens)}
    if len(token_ids) != len(tokens):
        raise ArgumentError("train_tokenizer: a special token collides with a byte token")
    first_byte_id = len(special_tokens)

    piece_counts = count_pieces(texts, special_tokens)
    words = [
        [first_byte_id + b for b in piece.encode("utf-8")] for piece in piece_counts
    ]  # symbol ids per piece
    freqs = list(piece_counts.values())

    pair_counts = defaultdict(int)  # (left, right) -> weighted count
    where = defaultdict(set)  # (left, right) -> indices of the words that (may) contain it
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(tokens) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale entry: the count changed after it was pushed
        if -neg_count < min_frequency:
            break
        a, b = pair
        merged = tokens[a] + tokens[b]
        if merged not in token_ids:  # two merges can spell the same string: reuse its id
            token_ids[merged] = len(tokens)
            tokens.append(merged)
        new = token_ids[merged]
        merges.append((tokens[a], tokens[b]))

        changed = set()
        for w in where.pop(pair):
            word, f = words[w], freqs[w]
            out, i = [], 0
            while i < len(word):  # leftmost, non-overlapping occurrences, as BPE encoding merges
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            if len(out) == len(word):
                continue  # the word lost this pair in an earlier merge (where[] is lazy)
            for p in zip(word, word[1:]):
                pair_counts[p] -= f
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                if p[0] == new or p[1] == new:  # the only pairs this word did not have before
                    where[p].add(w)
                    changed.add(p)
            changed.update(
                p for p in zip(word, word[1:]) if p[0] in (a, b) or p[1] in (a, b)
            )  # lost pairs
            words[w] = out
        pair_counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                del pair_counts[p]

    vocab = {t: i for i, t in enumerate(tokens)}
    added = [{"content": t, "id": i, "special": True} for i, t in enumerate(special_tokens)]
    return BloomTokenizer(vocab, merges, added, source="train_tokenizer")
