"""A preallocated key/value cache, written by index (no concatenation per decode step)."""
import torch


class KVCache:
    """Keys and values of every decoder layer for one generation.

    Layers write the new positions at `length`; the model advances `length` once per forward, after every
    layer has written. Shapes: (num_layers, B, nh, max_length, hd).
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        # Positions at or past `length` are never read, so the storage needs no initialisation.
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0
        self.cross = None       # model-specific state kept for a generation (CogAgent: a CrossAttentionCache)
        # (B, max_length) bool, True at real (not padding) positions; allocated by the first padded forward.
        self.real: torch.Tensor | None = None

    def update(self, layer_id: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` (B, nh, T, hd) after the cached positions; return all of them (B, nh, S, hd)."""
        end = self.end_after(key.shape[2])
        self.keys[layer_id, :, :, self.length:end] = key
        self.values[layer_id, :, :, self.length:end] = value
        return self.keys[layer_id, :, :, :end], self.values[layer_id, :, :, :end]

    def record_padding(self, attention_mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
        """Note which of the next `shape` = (B, T) positions are real (`attention_mask`, None: all of them).
        -> (B, length + T) bool over every key the new tokens see, or None while no position is padding."""
        if attention_mask is None and self.real is None:
            return None
        if self.real is None:
            self.real = torch.ones(self.keys.shape[1], self.max_length, dtype=torch.bool, device=self.keys.device)
        end = self.end_after(shape[1])
        self.real[:, self.length:end] = True if attention_mask is None else attention_mask
        return self.real[:, :end]

    def end_after(self, num_tokens: int) -> int:
        end = self.length + num_tokens
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were asked for")
        return end

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens

    # --- slots: the rows of a continuous batch (utils/inference/engine.py) ----------------------------------------

    def mark_all_padding(self) -> None:
        """Treat every position as padding until rows are placed (a batch whose rows come and go)."""
        self.real = torch.zeros(self.keys.shape[1], self.max_length, dtype=torch.bool, device=self.keys.device)

    def shift(self, offset: int) -> None:
        """Move the cached positions [0, length) by `offset` (> 0 right, < 0 left) in every row; `length` follows.

        Rows of a continuous batch end at the shared `length` (the next decode step writes there); a longer newly
        placed row needs room on the left (shift right), and retired rows leave room to reclaim (shift left). Rotary
        positions live in the keys, so moving them changes nothing but where they are read from."""
        if not -self.length <= offset <= self.max_length - self.length:
            raise ValueError(f"cannot shift {self.length} cached positions by {offset} in {self.max_length}")
        source, target = slice(max(0, -offset), self.length), slice(max(0, offset), self.length + offset)
        for storage in (self.keys, self.values):
            storage[:, :, :, target] = storage[:, :, :, source].clone()                # (layers, B, nh, n, hd)
        if self.real is not None:
            self.real[:, target] = self.real[:, source].clone()
            self.real[:, :max(0, offset)] = False                                      # vacated on the left
        self.length += offset

    def place(self, row: int, source: "KVCache", source_row: int) -> None:
        """Copy `source`'s row (its `length` positions, e.g. a prefill) into `row`, ending at this cache's `length`;
        the positions before it become padding. The caller makes room first (`shift`)."""
        count = source.length
        start = self.length - count
        if start < 0:
            raise ValueError(f"a row of {count} positions does not end at position {self.length}")
        self.keys[:, row, :, start:self.length] = source.keys[:, source_row, :, :count]
        self.values[:, row, :, start:self.length] = source.values[:, source_row, :, :count]
        if self.real is None:
            self.mark_all_padding()
        self.real[row, :start] = False
        self.real[row, start:self.length] = True if source.real is None else source.real[source_row, :count]
