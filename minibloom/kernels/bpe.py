"""The tokenizer's fast twin: BLOOM's pre-token split and the BPE merges in one numba pass.

`encode_texts(data, fixed, model)` has the signature and the ids of the reference
`minibloom.tokenizer.encode_texts` (the `regex` split, `bpe_merge` on a dict; about 1 MB/s), and
is chosen in its place by `minibloom.dispatch.fast_or_reference`. tests/test_tokenizer.py checks
that the two give the same ids (golden corpus, long pieces, hypothesis).

How it is fast: one compiled pass over the UTF-8 bytes of all texts of a batch (joined by a byte
that UTF-8 never uses) finds piece boundaries with a hand-written scanner (the Split regex is
simple enough to scan: an optional space, then a run of "word" characters) and merges each piece
in two small arrays (symbols, and the merge of each adjacent pair). Merges are packed into one
int64 (rank << 32 | merged id) so that comparing them compares ranks; the first round of pairs
(single bytes) reads a dense 256 x 256 table, later pairs an open-addressing hash table whose key
and merge share a row (one cache line per lookup); a 1 MB cache of recent short pieces saves
re-merging repeats (benchmarks/bench_tokenizer.py measures it against HF `tokenizers` and
tiktoken).

Speed notes, measured: the three separate key/rank/merged arrays and the linked list of symbols
that came before cost 40% (three cache misses per lookup, pointer chasing); a bigger piece cache
is slower, not faster (past the L2 cache every hit is a memory stall), and so is a cache that keeps
the first pieces seen (UDHR changes language every few kB); inside numba kernels, `return a or b`
compiles to a slow generic path (20x, see `_is_word`). Pieces of more than LONG_PIECE bytes (CJK
sentences, long runs of one character) are merged with a heap, O(n log n) like HF, so no input is
quadratic.
"""

import gc
from typing import NamedTuple

import numpy as np

from minibloom.errors import TokenizerError
from minibloom.jit import njit, use_numba
from minibloom.tokenizer import SPLIT_EXCLUDED, TEXT_SEPARATOR, BpeModel


def _excluded_table() -> np.ndarray:
    """bool[65536]: True for the code points in SPLIT_EXCLUDED (all of them are in the BMP)."""
    table = np.zeros(65536, dtype=np.bool_)
    for c in SPLIT_EXCLUDED:
        table[ord(c)] = True
    return table


# ------------------------------------------------------------------------------------------------
# the merge tables, in the two forms the twins use
# ------------------------------------------------------------------------------------------------


class BpeTables(NamedTuple):
    """The packed merge tables of one tokenizer, built once by `build_tables` (kept in BpeModel.fast).

    byte_ids:   int64 (256,)  BpeModel.byte_ids.
    pair_table: int64 (N, 2)  open-addressing hash table of the merges for the numba twin. Row =
                (key, merge): key = left << 32 | right (-1 marks an empty row) and merge =
                rank << 32 | merged_id (see `pack_merge`). N is a power of two >= 2 x merges; key
                and merge share a row so that one lookup touches one cache line.
    byte_pairs: int64 (65536,)  the merge of every pair of single-byte tokens, dense: entry
                b1 << 8 | b2 is the packed merge of (byte_ids[b1], byte_ids[b2]), or NO_MERGE. A
                piece's first round of lookups (one per adjacent byte pair) hits this table only.
    excluded:   bool (65536,)  the split's excluded code points (see SPLIT_EXCLUDED).
    """

    byte_ids: np.ndarray
    pair_table: np.ndarray
    byte_pairs: np.ndarray
    excluded: np.ndarray


# A merge packed into one int64: rank in the high 32 bits, merged token id in the low 32 bits. Packed
# merges order like their ranks, so "lowest rank" is "smallest packed value" and the merged id
# travels along for free. NO_MERGE is larger than any packed merge.
NO_MERGE = np.int64(2**63 - 1)


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing constant (2^64 / golden ratio)


def pack_merge(rank: int, merged_id: int) -> int:
    """One int64 holding a merge: rank << 32 | merged_id (see NO_MERGE)."""
    return (rank << 32) | merged_id


def build_tables(byte_ids, merges: dict) -> BpeTables:
    """Pack a BpeModel's merges {(left_id, right_id): (rank, merged_id)} into the two lookup tables.

    The pair table is filled by a numba loop or its plain twin (`MINIBLOOM_NUMBA`, tested equal).
    """
    byte_ids = np.ascontiguousarray(byte_ids, dtype=np.int64)
    pairs = sorted(merges.items(), key=lambda kv: kv[1][0])  # rank order
    left = np.array([a for (a, _), _ in pairs], dtype=np.int64)
    right = np.array([b for (_, b), _ in pairs], dtype=np.int64)
    rank = np.array([r for _, (r, _) in pairs], dtype=np.int64)
    into = np.array([ab for _, (_, ab) in pairs], dtype=np.int64)
    largest = max(
        [len(pairs), int(byte_ids.max(initial=0))]
        + [int(a.max(initial=0)) for a in (left, right, into)]
    )
    if (
        largest >= 2**31
    ):  # cannot happen for a tokenizer that loaded (ids < 4 x tokens + 1024), but would corrupt
        raise TokenizerError(
            f"merge table: ids and merge counts must be below 2^31 to be packed, found {largest}"
        )
    size = 1 << max(4, int(2 * max(len(merges), 1) - 1).bit_length())
    pair_table = np.full((size, 2), -1, dtype=np.int64)  # (N, 2) rows (key, packed merge)
    fill = _fill_pair_table_numba if use_numba() else _fill_pair_table_plain
    fill(left, right, rank, into, pair_table)

    byte_pairs = np.full(256 * 256, NO_MERGE, dtype=np.int64)  # (256 * 256,) index b1 << 8 | b2
    byte_of = {token: b for b, token in enumerate(byte_ids.tolist()) if token >= 0}
    for (a, b), (r, ab) in merges.items():
        if a in byte_of and b in byte_of:
            byte_pairs[byte_of[a] << 8 | byte_of[b]] = pack_merge(r, ab)
    return BpeTables(byte_ids, pair_table, byte_pairs, _excluded_table())


@njit
def _hash_slot(key, mask):
    """Row of a pair key: Fibonacci hashing, bits 32.. of key * _HASH_MUL (mod 2^64)."""
    return np.int64((np.uint64(key) * _HASH_MUL) >> np.uint64(32)) & mask


def _hash_slot_plain(key: int, mask: int) -> int:
    return ((key * int(_HASH_MUL)) & 0xFFFFFFFFFFFFFFFF) >> 32 & mask


@njit
def _fill_pair_table_numba(left, right, rank, into, pair_table):
    mask = pair_table.shape[0] - 1
    for i in range(left.shape[0]):
        key = (left[i] << 32) | right[i]
        slot = _hash_slot(key, mask)
        while pair_table[slot, 0] != -1 and pair_table[slot, 0] != key:  # linear probing
            slot = (slot + 1) & mask
        pair_table[slot, 0] = key
        pair_table[slot, 1] = (rank[i] << 32) | into[i]


def _fill_pair_table_plain(left, right, rank, into, pair_table):
    mask = pair_table.shape[0] - 1
    for a, b, r, ab in zip(left.tolist(), right.tolist(), rank.tolist(), into.tolist()):
        key = (a << 32) | b
        slot = _hash_slot_plain(key, mask)
        while pair_table[slot, 0] != -1 and pair_table[slot, 0] != key:
            slot = (slot + 1) & mask
        pair_table[slot] = key, pack_merge(r, ab)


# ------------------------------------------------------------------------------------------------
# scan UTF-8 bytes for pieces and merge each in place
# ------------------------------------------------------------------------------------------------


@njit
def _lookup_merge(a, b, pair_table, mask):
    """The packed merge of the pair (a, b) (rank << 32 | merged id), or NO_MERGE."""
    key = (a << 32) | b
    slot = _hash_slot(key, mask)
    while True:
        k = pair_table[slot, 0]
        if k == key:
            return pair_table[slot, 1]
        if k == -1:
            return NO_MERGE
        slot = (slot + 1) & mask


@njit
def _bpe_piece_numba(data, start, stop, byte_ids, byte_pairs, pair_table, out, n_out, scratch):
    """BPE-merge the bytes data[start:stop]; append the ids to out[n_out:]; return the new n_out.

    sym[:n] holds the symbols (token ids) and merge[i] the packed merge of (sym[i], sym[i + 1]),
    so each round is: find the smallest merge[i] (lowest rank; `<` keeps the leftmost of equal
    ones), replace sym[i] by the merged id, shift the tail left by one, and look up only the two
    pairs that changed. The first round's pairs are pairs of bytes: read from the dense byte_pairs.
    Arrays rather than a linked list: pieces are short, and shifting a few contiguous int64s beats
    chasing pointers. scratch: int64 (2, >= stop - start) for sym and merge.
    """
    sym, merge = scratch[0], scratch[1]
    mask = pair_table.shape[0] - 1
    n, prev = 0, 0
    for p in range(start, stop):
        b = np.int64(data[p])
        if byte_ids[b] >= 0:  # a byte without a token is dropped, as in HF
            if n > 0:
                merge[n - 1] = byte_pairs[(prev << 8) | b]
            sym[n] = byte_ids[b]
            prev = b
            n += 1
    if n == 0:
        return n_out
    merge[n - 1] = NO_MERGE
    while n > 1:
        best = 0
        for i in range(1, n - 1):
            if merge[i] < merge[best]:
                best = i
        if merge[best] == NO_MERGE:
            break
        sym[best] = merge[best] & 0xFFFFFFFF
        for i in range(best + 1, n - 1):  # drop sym[best + 1]; merge[n - 1] = NO_MERGE moves too
            sym[i] = sym[i + 1]
            merge[i] = merge[i + 1]
        n -= 1
        if best + 1 < n:
            merge[best] = _lookup_merge(sym[best], sym[best + 1], pair_table, mask)
        else:
            merge[best] = NO_MERGE
        if best > 0:
            merge[best - 1] = _lookup_merge(sym[best - 1], sym[best], pair_table, mask)
    for i in range(n):
        out[n_out + i] = sym[i]
    return n_out + n


LONG_PIECE = 64  # pieces longer than this are merged with a heap (O(n log n) instead of O(n^2))


@njit
def _heap_push(keys, pos, size, key, i):
    """Push (key, i) onto the binary min-heap keys/pos[:size], ordered by (key, i); return size + 1."""
    k = size
    while k > 0:
        parent = (k - 1) >> 1
        if (keys[parent] < key) | ((keys[parent] == key) & (pos[parent] < i)):
            break
        keys[k], pos[k] = keys[parent], pos[parent]
        k = parent
    keys[k], pos[k] = key, i
    return size + 1


@njit
def _heap_pop(keys, pos, size):
    """Remove the smallest entry of keys/pos[:size] (the caller has read it at [0]); return size - 1."""
    size -= 1
    key, i = keys[size], pos[size]  # the last entry sinks from the root
    k = 0
    while True:
        child = 2 * k + 1
        if child >= size:
            break
        if child + 1 < size:
            right = child + 1
            if (keys[right] < keys[child]) | (
                (keys[right] == keys[child]) & (pos[right] < pos[child])
            ):
                child = right
        if (key < keys[child]) | ((key == keys[child]) & (i < pos[child])):
            break
        keys[k], pos[k] = keys[child], pos[child]
        k = child
    keys[k], pos[k] = key, i
    return size


@njit
def _bpe_long_piece_numba(data, start, stop, byte_ids, pair_table, out, n_out):
    """`_bpe_piece_numba` for long pieces (a CJK sentence, a run of 10k spaces): the same merges in
    the same order, found with a heap of (merge, position) instead of a scan per round.

    The symbols form a linked list (a merge keeps the left node and unlinks the right one), and
    merge[i] is the packed merge of node i with its successor. The heap may hold outdated entries:
    an entry counts only while its node is alive and still has that merge (a pair's rank names the
    pair, so an equal value means the same pair at the same place). Smallest (merge, position)
    first is lowest rank, then leftmost: the order of the scan.
    """
    m = stop - start
    sym = np.empty(m, dtype=np.int64)
    merge = np.empty(m, dtype=np.int64)
    nxt = np.empty(m, dtype=np.int64)
    prv = np.empty(m, dtype=np.int64)
    alive = np.empty(m, dtype=np.bool_)
    heap_keys = np.empty(3 * m, dtype=np.int64)  # each merge pushes at most two new entries
    heap_pos = np.empty(3 * m, dtype=np.int64)
    mask = pair_table.shape[0] - 1
    n = 0
    for p in range(start, stop):
        t = byte_ids[data[p]]
        if t >= 0:
            sym[n], nxt[n], prv[n], alive[n] = t, n + 1, n - 1, True
            n += 1
    if n == 0:
        return n_out
    nxt[n - 1] = -1
    merge[n - 1] = NO_MERGE
    size = 0
    for i in range(n - 1):
        merge[i] = _lookup_merge(sym[i], sym[i + 1], pair_table, mask)
        if merge[i] != NO_MERGE:
            size = _heap_push(heap_keys, heap_pos, size, merge[i], i)
    while size > 0:
        key, i = heap_keys[0], heap_pos[0]
        size = _heap_pop(heap_keys, heap_pos, size)
        if (not alive[i]) or (merge[i] != key):
            continue  # outdated entry
        gone = nxt[i]  # (sym[i], sym[gone]) -> merged token in node i
        sym[i] = key & 0xFFFFFFFF
        alive[gone] = False
        nxt[i] = nxt[gone]
        merge[i] = NO_MERGE
        if nxt[i] != -1:
            prv[nxt[i]] = i
            merge[i] = _lookup_merge(sym[i], sym[nxt[i]], pair_table, mask)
            if merge[i] != NO_MERGE:
                size = _heap_push(heap_keys, heap_pos, size, merge[i], i)
        left = prv[i]
        if left != -1:
            merge[left] = _lookup_merge(sym[left], sym[i], pair_table, mask)
            if merge[left] != NO_MERGE:
                size = _heap_push(heap_keys, heap_pos, size, merge[left], left)
    i = 0
    while i != -1:
        out[n_out] = sym[i]
        n_out += 1
        i = nxt[i]
    return n_out


@njit
def _code_point_at(data, p):
    """(code point, byte length) of the UTF-8 character starting at data[p] (input is valid UTF-8)."""
    b = np.int64(data[p])
    if b < 0x80:
        return b, 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(data[p + 1]) & 0x3F), 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((np.int64(data[p + 1]) & 0x3F) << 6) | (
            np.int64(data[p + 2]) & 0x3F
        ), 3
    return (
        ((b & 0x07) << 18)
        | ((np.int64(data[p + 1]) & 0x3F) << 12)
        | ((np.int64(data[p + 2]) & 0x3F) << 6)
        | (np.int64(data[p + 3]) & 0x3F)
    ), 4


@njit
def _is_word(c, excluded):
    """True if code point c may be part of a match (written without `or`: numba compiles
    `return a or b` into a slow generic path, 20x slower here)."""
    if c >= 65536:
        return True
    return not excluded[c]


PIECE_CACHE_SLOTS = (
    1 << 14
)  # x 64 bytes = 1 MB: stays in the L2 cache (2 MB and 4 MB measured slower)
CACHED_BYTES = 24  # pieces up to 24 bytes ...
CACHED_IDS = 8  # ... that encode to at most 8 ids are cached (98% of occurrences of longer pieces)
CACHE_PROBES = 4
_HASH_MUL_2 = np.uint64(0xC2B2AE3D27D4EB4F)


@njit
def _piece_ids(data, start, stop, tables, out, n_out, scratch, cache):
    """Append the ids of piece data[start:stop] to out[n_out:]; return the new n_out.

    The piece cache is a hash table of 64-byte rows, one per distinct short piece: (length | id
    count << 8, the piece's bytes packed little-endian into 3 words, up to 8 ids packed two per word
    (ids < 2^31)), 0 in the
    first word meaning empty. A piece is looked for in CACHE_PROBES consecutive slots; a miss is
    stored in the first empty one, else it evicts the piece in its home slot (text changes topic and
    language, so recent pieces beat first-seen ones). Long or many-token pieces are merged every time.
    """
    byte_ids, byte_pairs, pair_table = tables
    length = stop - start
    if length == 1:  # one byte: nothing to merge
        if byte_ids[data[start]] >= 0:
            out[n_out] = byte_ids[data[start]]
            n_out += 1
        return n_out
    if (
        (length == 2) & (byte_ids[data[start]] >= 0) & (byte_ids[data[start + 1]] >= 0)
    ):  # one lookup
        merge = byte_pairs[(np.int64(data[start]) << 8) | np.int64(data[start + 1])]
        if merge != NO_MERGE:
            out[n_out] = merge & 0xFFFFFFFF
            return n_out + 1
        out[n_out], out[n_out + 1] = byte_ids[data[start]], byte_ids[data[start + 1]]
        return n_out + 2
    if length > LONG_PIECE:
        return _bpe_long_piece_numba(data, start, stop, byte_ids, pair_table, out, n_out)
    if length > CACHED_BYTES:
        return _bpe_piece_numba(
            data, start, stop, byte_ids, byte_pairs, pair_table, out, n_out, scratch
        )
    w0, w1, w2 = np.uint64(0), np.uint64(0), np.uint64(0)  # the piece's bytes, 8 per word
    for k in range(length):
        byte = np.uint64(data[start + k]) << np.uint64(8 * (k & 7))
        if k < 8:
            w0 |= byte
        elif k < 16:
            w1 |= byte
        else:
            w2 |= byte
    h = ((w0 * _HASH_MUL) ^ w1) * _HASH_MUL_2
    h = ((h ^ w2) * _HASH_MUL) ^ np.uint64(length)
    mask = cache.shape[0] - 1
    home = np.int64(h >> np.uint64(32)) & mask
    i0, i1, i2 = np.int64(w0), np.int64(w1), np.int64(w2)
    free = home  # where a miss will be stored: the first empty probed slot, else the home slot
    for probe in range(CACHE_PROBES):
        slot = (home + probe) & mask
        meta = cache[slot, 0]
        if meta == 0:
            free = slot
            break
        if (
            ((meta & 0xFF) == length)
            & (cache[slot, 1] == i0)
            & (cache[slot, 2] == i1)
            & (cache[slot, 3] == i2)
        ):
            count = meta >> 8
            for k in range(count):  # two 32-bit ids per word
                out[n_out + k] = (cache[slot, 4 + (k >> 1)] >> (32 * (k & 1))) & 0xFFFFFFFF
            return n_out + count
    n_new = _bpe_piece_numba(
        data, start, stop, byte_ids, byte_pairs, pair_table, out, n_out, scratch
    )
    count = n_new - n_out
    if count <= CACHED_IDS:
        cache[free, 0] = length | (count << 8)
        cache[free, 1], cache[free, 2], cache[free, 3] = i0, i1, i2
        cache[free, 4], cache[free, 5], cache[free, 6], cache[free, 7] = 0, 0, 0, 0
        for k in range(count):
            cache[free, 4 + (k >> 1)] |= out[n_out + k] << (32 * (k & 1))
    return n_new


@njit
def _encode_segment(data, start, end, tables, excluded, out, n_out, scratch, cache):
    """Split data[start:end] (UTF-8 text without added tokens) into pieces and append their ids.

    Returns the new length of out.
    """
    gap_start = p = start
    while p < end:
        c, width = _code_point_at(data, p)
        # A match starts here if this is a word char, or a space followed by a word char.
        starts = _is_word(c, excluded)
        if (not starts) & (c == 32) & (p + 1 < end):
            c2, _ = _code_point_at(data, p + 1)
            starts = _is_word(c2, excluded)
        if not starts:
            p += width
            continue
        if gap_start < p:  # the gap before the match is one piece
            n_out = _piece_ids(data, gap_start, p, tables, out, n_out, scratch, cache)
        q = p + width
        while q < end:  # extend over the run of word characters
            c, width = _code_point_at(data, q)
            if not _is_word(c, excluded):
                break
            q += width
        n_out = _piece_ids(data, p, q, tables, out, n_out, scratch, cache)
        gap_start = p = q
    if gap_start < end:
        n_out = _piece_ids(data, gap_start, end, tables, out, n_out, scratch, cache)
    return n_out


@njit
def _encode_numba(data, fixed, byte_ids, byte_pairs, pair_table, excluded):
    """ids of the texts in data, split and merged in one pass (arguments: see `encode_texts`).

    Returns (ids int64 (<= n,), text_bounds int64 (G+1,)): text g's ids are
    ids[text_bounds[g]:text_bounds[g+1]]. The piece cache is shared by all texts.
    """
    n = data.shape[0]
    out = np.empty(n, dtype=np.int64)  # every byte yields at most one token
    scratch = np.empty(
        (2, LONG_PIECE), dtype=np.int64
    )  # _bpe_piece_numba's buffers (longer pieces: a heap)
    size = 256
    while size < min(n // 4, PIECE_CACHE_SLOTS):
        size *= 2
    cache = np.zeros((size, 8), dtype=np.int64)  # (N, 8), see _piece_ids
    tables = (byte_ids, byte_pairs, pair_table)
    n_texts = 1
    for p in range(n):
        if data[p] == TEXT_SEPARATOR:
            n_texts += 1
    text_bounds = np.zeros(n_texts + 1, dtype=np.int64)
    n_out, g, k, p = 0, 0, 0, 0
    while True:
        # ordinary text runs up to the next fixed span or the end of the text
        limit = fixed[k, 0] if k < fixed.shape[0] else n
        end = p
        while end < limit and data[end] != TEXT_SEPARATOR:
            end += 1
        n_out = _encode_segment(data, p, end, tables, excluded, out, n_out, scratch, cache)
        if end == limit and k < fixed.shape[0]:  # a fixed span: its id as it is
            out[n_out] = fixed[k, 2]
            n_out += 1
            p = fixed[k, 1]
            k += 1
        else:  # a separator, or the end of the data: the text is complete
            g += 1
            text_bounds[g] = n_out
            if end >= n:
                break
            p = end + 1
    return out[:n_out], text_bounds


def encode_texts(data: bytes, fixed: np.ndarray, model: BpeModel) -> list:
    """minibloom.tokenizer.encode_texts, compiled: all texts of `data` in one call (one piece cache,
    no per-text work in Python but the final list slicing). Builds model.fast on first use."""
    if model.fast is None:
        model.fast = build_tables(model.byte_ids, model.merges)
    tables = model.fast
    buffer = np.frombuffer(data, dtype=np.uint8)  # (n,)
    ids, text_bounds = _encode_numba(
        buffer, fixed, tables.byte_ids, tables.byte_pairs, tables.pair_table, tables.excluded
    )
    ids = ids.tolist()
    if len(text_bounds) == 2:
        return [ids]
    bounds = text_bounds.tolist()
    # Tens of thousands of new lists would set off several full cyclic-GC passes over every object
    # of the process (numba's alone are many): 8x the cost of the slicing. Lists of ints hold no
    # cycles, so the collector is paused while they are made (and left as it was found).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return [ids[bounds[g] : bounds[g + 1]] for g in range(len(bounds) - 1)]
    finally:
        if was_enabled:
            gc.enable()
