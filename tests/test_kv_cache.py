"""models/kv_cache.py: a static cache written at per-row positions and read through a mask."""
import pytest
import torch

from cogvlm.models.kv_cache import KVCache, attention_mask


def written(cache, rows, attention_mask_=None):
    """One forward's worth of writes: `rows` (B', T) as every layer's keys (values: minus them). -> CacheWrite."""
    write = cache.begin(attention_mask_, rows.shape)
    key = rows[:, None, :, None].expand(-1, cache.keys.shape[2], -1, cache.keys.shape[4]).float()
    for layer in range(cache.keys.shape[0]):
        keys, values = cache.update(layer, key, -key, write)
    return write, keys, values


def test_update_writes_in_place_at_each_rows_position_and_returns_the_window():
    cache = KVCache(num_layers=2, batch_size=2, num_heads=2, max_length=6, head_dim=3, dtype=torch.float32)
    storage = cache.keys.data_ptr()
    _, keys, values = written(cache, torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert keys.shape == (2, 2, 3, 3) and values[1, 0, :, 0].tolist() == [-4, -5, -6]
    _, keys, _ = written(cache, torch.tensor([[7], [8]]))
    assert keys.shape == (2, 2, 4, 3) and keys[:, 1, :, 0].tolist() == [[1, 2, 3, 7], [4, 5, 6, 8]]
    assert cache.keys.data_ptr() == storage and cache.length == 4 and cache.next_position.tolist() == [4, 4]


def test_a_static_cache_reads_every_position_with_unwritten_ones_masked():
    """In its one-token (decode) steps; a prompt reads the positions that may hold keys only."""
    cache = KVCache(1, 1, 1, max_length=5, head_dim=1, dtype=torch.float32, static=True)
    _, keys, _ = written(cache, torch.tensor([[1, 2]]))
    assert keys.shape == (1, 1, 2, 1)
    write, keys, _ = written(cache, torch.tensor([[3]]))
    assert keys.shape == (1, 1, 5, 1) and write.index.tolist() == [[2]]
    assert write.mask[0, 0].tolist() == [[True, True, True, False, False]]


def test_padding_is_never_seen_except_by_itself():
    cache = KVCache(1, 2, 1, max_length=4, head_dim=1, dtype=torch.float32)
    write, _, _ = written(cache, torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert write.mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert write.mask[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_a_forward_of_fewer_rows_uses_the_first_rows_only():
    cache = KVCache(1, 3, 1, max_length=4, head_dim=1, dtype=torch.float32)
    written(cache, torch.tensor([[1], [2]]))
    assert cache.next_position.tolist() == [1, 1, 0] and cache.real[:, 0].tolist() == [True, True, False]


def test_overflow_is_an_error():
    cache = KVCache(1, 1, 1, max_length=2, head_dim=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="holds 2 positions; 3"):
        cache.begin(None, torch.Size([1, 3]))


def test_place_copies_a_prefill_row_without_its_padding_to_the_start_of_a_row():
    cache = KVCache(1, 2, 1, max_length=6, head_dim=1, dtype=torch.float32)
    written(cache, torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))
    prefill = KVCache(1, 2, 1, max_length=3, head_dim=1, dtype=torch.float32)
    written(prefill, torch.tensor([[0, 9, 10], [11, 12, 13]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    cache.place(1, prefill, 0, count=2)
    assert cache.keys[0, 1, 0, :2, 0].tolist() == [9, 10] and cache.values[0, 1, 0, :2, 0].tolist() == [-9, -10]
    assert cache.real[1].tolist() == [True, True, False, False, False, False]
    assert cache.next_position.tolist() == [4, 2]
    assert cache.keys[0, 0, 0, :4, 0].tolist() == [1, 2, 3, 4]                  # the other row is untouched
    write, keys, _ = written(cache, torch.tensor([[20], [21]]))                 # each row writes at its own end
    assert write.index.tolist() == [[4], [2]] and keys[1, 0, :3, 0].tolist() == [9, 10, 21]
    assert write.mask[1, 0, 0].tolist() == [True, True, True, False, False]


def test_move_copies_a_row_with_its_position():
    cache = KVCache(1, 2, 1, max_length=4, head_dim=1, dtype=torch.float32)
    cache.place(1, _single([5, 6, 7]), 0, count=3)
    cache.move(1, 0, count=3)
    assert cache.keys[0, 0, 0, :3, 0].tolist() == [5, 6, 7] and cache.next_position[0] == 3
    assert cache.real[0].tolist() == [True, True, True, False]


def _single(values):
    cache = KVCache(1, 1, 1, max_length=len(values), head_dim=1, dtype=torch.float32)
    written(cache, torch.tensor([values]))
    return cache


def test_attention_mask_of_queries_over_keys():
    mask = attention_mask(torch.tensor([[True, True, False, True]]), torch.tensor([[2, 3]]))
    assert mask.shape == (1, 1, 2, 4)
    assert mask[0, 0].tolist() == [[True, True, True, False], [True, True, False, True]]
