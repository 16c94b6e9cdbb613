"""KVCache: the keys and values of every layer for tokens already processed, preallocated.

    key, value: (L, B, H, S_max, D) float32      length: positions filled so far (same for all rows)

`BloomBackbone.forward(..., cache=kv)` writes the new tokens' keys/values at [length, length + T)
of every layer, attends over [0, length + T), and then advances `length` by T. Nothing is
reallocated per token, as in llama2.c's run state; `S_max` is fixed when the cache is made.

Rows are independent, so beam search and contrastive search reshuffle or repeat rows with
`reorder(index)` / `repeat(n)` (index along B), which act on the filled part only (beam search
reorders in place, `reorder(index, in_place=True)`, so no new cache is made per step). The padding
mask that goes with the cache (covering all `length + T` positions) is the caller's to keep.

A cache that would not fit in memory is refused before it is allocated (memory.check_fits), so a
huge max_length is one ArgumentError line, not an out-of-memory kill.

Leaves out: sliding windows and eviction (BLOOM has neither), half-precision storage.
"""

import numpy as np

from minibloom import memory
from minibloom.errors import ArgumentError


class KVCache:
    """Preallocated per-layer keys and values.

    Args:
        num_layers, batch_size, num_heads, max_length, head_dim: L, B, H, S_max, D.
    """

    def __init__(self, num_layers, batch_size, num_heads, max_length, head_dim):
        for name, v in dict(
            num_layers=num_layers,
            batch_size=batch_size,
            num_heads=num_heads,
            max_length=max_length,
            head_dim=head_dim,
        ).items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ArgumentError(f"KVCache: `{name}` must be a positive integer, found {v!r}")
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        memory.check_fits(
            2 * 4 * int(np.prod(shape, dtype=object)),
            f"KVCache of shape {shape} (keys and values)",
            "lower max_length or the batch size",
        )  # before allocating
        self.key = np.zeros(shape, dtype=np.float32)  # (L, B, H, S_max, D)
        self.value = np.zeros(shape, dtype=np.float32)  # (L, B, H, S_max, D)
        self.length = 0

    @classmethod
    def for_config(cls, config, batch_size, max_length):
        """A cache sized for `config` (a BloomConfig)."""
        return cls(config.n_layer, batch_size, config.n_head, max_length, config.head_dim)

    @property
    def num_layers(self):
        return self.key.shape[0]

    @property
    def batch_size(self):
        return self.key.shape[1]

    @property
    def max_length(self):
        return self.key.shape[3]

    def write(self, layer, k, v):
        """Store k, v (B, H, T, D) of `layer` at [length, length + T); return the keys and
        values over [0, length + T) as views (B, H, S, D). `length` itself moves in `advance`."""
        T = k.shape[2]
        end = self.length + T
        if end > self.max_length:
            raise ArgumentError(
                f"KVCache: {self.length} cached + {T} new tokens exceed max_length {self.max_length}"
            )
        self.key[layer, :, :, self.length : end] = k
        self.value[layer, :, :, self.length : end] = v
        return self.key[layer, :, :, :end], self.value[layer, :, :, :end]

    def advance(self, T):
        """Mark T more positions as filled (called once per forward, after every layer wrote)."""
        self.length += T

    def reorder(self, index, in_place=False):
        """Keep rows `index` (B',) int along the batch axis (beam search: follow the surviving beams).

        B' may differ from B; the result is a new cache (same S_max) holding the filled part.
        in_place=True (needs B' == B) rewrites this cache's rows instead and returns it: beam
        search does this every step, and a new cache would allocate L * B * H * S_max * D floats
        twice per token (75 MB for bloom-560m with 4 beams and 192 positions).
        """
        index = np.asarray(index, dtype=np.int64)
        n = self.length
        if in_place:
            if len(index) != self.batch_size:
                raise ArgumentError(
                    f"KVCache.reorder: in_place needs {self.batch_size} row indices, found {len(index)}"
                )
            # the fancy index on the right makes a copy of the filled part first, so rows may
            # move to any other row (a permutation or duplicates) without reading overwritten data
            self.key[:, :, :, :n] = self.key[:, index, :, :n]
            self.value[:, :, :, :n] = self.value[:, index, :, :n]
            return self
        new = KVCache.__new__(KVCache)
        new.key = np.zeros(
            self.key.shape[:1] + (len(index),) + self.key.shape[2:], dtype=np.float32
        )
        new.value = np.zeros_like(new.key)
        new.key[:, :, :, :n] = self.key[:, index, :, :n]
        new.value[:, :, :, :n] = self.value[:, index, :, :n]
        new.length = n
        return new

    def repeat(self, n):
        """Each row repeated n times consecutively (B -> B * n), e.g. to expand a prompt into beams."""
        return self.reorder(np.repeat(np.arange(self.batch_size), n))
