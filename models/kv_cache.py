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
