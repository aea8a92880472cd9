"""A static key/value cache: preallocated, written at index tensors, read through a mask.

Every row keeps its own write position, so rows of a batch grow on their own (continuous batching places a new
row at position 0 of its row while the others are deep into their answers), and a decode step's tensors have the
same shapes at every step: it can be compiled (torch.compile, CUDA graphs) once and replayed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheWrite:
    """Where the tokens of one forward go, computed once per forward and read by every layer.

    `index` (B, T): the cache position of each new token. `mask` (B, 1, T, W) bool: which of the first W cache
    positions each new token attends to. W is the whole cache for a decode step of a static cache (fixed shapes),
    else the positions that may hold keys (less work in eager mode)."""
    index: torch.Tensor
    mask: torch.Tensor

    @property
    def window(self) -> int:
        return self.mask.shape[-1]


def attention_mask(key_real: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
    """key_real (B, W) bool, False at padding (and at positions not written); query_index (B, T): each query's
    position. -> (B, 1, T, W) bool: a query sees the real keys at or before its position, and always itself, so a
    padding query attends to one key instead of none (a fully masked row is NaN in some kernels, and a NaN value
    would reach real tokens through 0 * NaN)."""
    key_index = torch.arange(key_real.shape[1], device=key_real.device)                             # (W,)
    causal = key_index <= query_index[..., None]                                                     # (B, T, W)
    itself = key_index == query_index[..., None]                                                     # (B, T, W)
    return (causal & key_real[:, None, :] | itself)[:, None]                                         # (B, 1, T, W)


class KVCache:
    """Keys and values of every decoder layer for the rows of one batch.

    Shapes: keys/values (num_layers, B, nh, max_length, hd); `next_position` (B,) the position where each row
    writes its next token; `real` (B, max_length) True where a row holds a key its queries may see. A forward of
    B' <= B rows uses the first B' rows (the engine keeps its busy rows first, so free ones cost nothing).
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu", static: bool = False):
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        # Zeros, not empty: a static step reads every position (masked ones with weight 0, and 0 * NaN is NaN).
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.real = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_length = max_length
        # Host-side bound: no row holds keys at or past `length`. Checks overflow and sizes the eager window
        # without reading `next_position` back from the device.
        self.length = 0
        self.static = static
        self.cross = None       # model-specific state kept for a generation (CogAgent: a CrossAttentionCache)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def begin(self, attention_mask_: torch.Tensor | None, shape: torch.Size) -> CacheWrite:
        """Reserve the positions of the next `shape` = (B', T) tokens of rows [0, B'), note which are real
        (`attention_mask_` (B', T), None: all) and advance every row by T. -> where the layers write and read."""
        rows, num_tokens = shape
        end = self.length + num_tokens
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were asked for")
        if rows > self.batch_size:
            raise ValueError(f"KV cache holds {self.batch_size} rows; {rows} were given")
        offsets = torch.arange(num_tokens, device=self.real.device)
        index = self.next_position[:rows, None] + offsets                                             # (B', T)
        real = torch.ones_like(index, dtype=torch.bool) if attention_mask_ is None else attention_mask_.bool()
        self.real[:rows].scatter_(1, index, real)
        self.next_position[:rows] += num_tokens
        self.length = end
        # A static cache's decode steps (one token each: what is compiled) read every position; a prompt (eager)
        # reads only the positions that may hold keys.
        window = self.max_length if self.static and num_tokens == 1 else end
        return CacheWrite(index, attention_mask(self.real[:rows, :window], index))

    def update(self, layer_id: int, key: torch.Tensor, value: torch.Tensor, write: CacheWrite
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` (B', nh, T, hd) at `write.index`; -> every key and value of the window
        (B', nh, W, hd), for attention under `write.mask`."""
        rows = key.shape[0]
        where = write.index[:, None, :, None].expand_as(key)                                          # (B', nh, T, hd)
        keys, values = self.keys[layer_id, :rows], self.values[layer_id, :rows]                        # (B', nh, S, hd)
        keys.scatter_(2, where, key)
        values.scatter_(2, where, value)
        return keys[:, :, :write.window], values[:, :, :write.window]

    # --- rows of a continuous batch (utils/inference/engine.py) ------------------------------------------------------

    def place(self, row: int, source: "KVCache", source_row: int, count: int) -> None:
        """Copy the last `count` positions `source` holds in `source_row` (a prefill's row without its left
        padding) to positions [0, count) of `row`; the row writes its next token at `count`. Rotary positions live
        in the keys, so where a key sits in the cache changes nothing but where it is read from."""
        start = source.length - count
        self.keys[:, row, :, :count] = source.keys[:, source_row, :, start:source.length]
        self.values[:, row, :, :count] = source.values[:, source_row, :, start:source.length]
        self.real[row] = False
        self.real[row, :count] = source.real[source_row, start:source.length]
        self.next_position[row] = count
        self.length = max(self.length, count)

    def move(self, source_row: int, row: int, count: int) -> None:
        """Copy row `source_row` (its first `count` positions: all it holds) to `row` (keeping busy rows first)."""
        self.keys[:, row, :, :count] = self.keys[:, source_row, :, :count]
        self.values[:, row, :, :count] = self.values[:, source_row, :, :count]
        self.real[row] = self.real[source_row]
        self.next_position[row] = self.next_position[source_row]

    def bound(self, length: int) -> None:
        """Lower the host-side bound to `length` once the rows holding the longest keys are gone (the caller knows
        every row's length); the eager window shrinks with it."""
        self.length = length
