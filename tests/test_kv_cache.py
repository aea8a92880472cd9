import pytest
import torch

from cogvlm.models.kv_cache import KVCache


def test_update_writes_in_place_and_returns_all_positions():
    cache = KVCache(num_layers=2, batch_size=1, num_heads=2, max_length=5, head_dim=3, dtype=torch.float32)
    storage = cache.keys.data_ptr()
    k1, v1 = torch.ones(1, 2, 3, 3), 2 * torch.ones(1, 2, 3, 3)
    keys, values = cache.update(1, k1, v1)
    assert keys.shape == (1, 2, 3, 3) and torch.equal(values, v1)
    cache.advance(3)
    keys, values = cache.update(1, 3 * torch.ones(1, 2, 1, 3), 4 * torch.ones(1, 2, 1, 3))
    assert keys.shape == (1, 2, 4, 3)
    assert keys[0, 0, :, 0].tolist() == [1, 1, 1, 3] and values[0, 1, :, 0].tolist() == [2, 2, 2, 4]
    assert cache.keys.data_ptr() == storage


def test_overflow_is_an_error():
    cache = KVCache(1, 1, 1, max_length=2, head_dim=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="holds 2 positions; 3"):
        cache.update(0, torch.ones(1, 1, 3, 1), torch.ones(1, 1, 3, 1))


def filled(cache, layer_rows):
    """Write `layer_rows` (B, n) as every layer's keys and values at the next n positions; advance."""
    key = layer_rows[:, None, :, None].expand(-1, cache.keys.shape[2], -1, cache.keys.shape[4]).float()
    for layer in range(cache.keys.shape[0]):
        cache.update(layer, key, -key)
    cache.advance(layer_rows.shape[1])


def test_shift_moves_every_row_and_its_padding_and_refuses_to_overflow():
    cache = KVCache(1, 2, 1, max_length=6, head_dim=1, dtype=torch.float32)
    cache.mark_all_padding()
    filled(cache, torch.tensor([[1, 2, 3], [4, 5, 6]]))
    cache.real[:, :3] = torch.tensor([[False, True, True], [True, True, True]])
    cache.shift(2)
    assert cache.length == 5 and cache.keys[0, :, 0, 2:5, 0].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert cache.real[:, :5].tolist() == [[False, False, False, True, True], [False, False, True, True, True]]
    cache.shift(-1)
    assert cache.length == 4 and cache.values[0, 1, 0, 1:4, 0].tolist() == [-4, -5, -6]
    assert cache.real[0, :4].tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="cannot shift 4 cached positions by 3 in 6"):
        cache.shift(3)


def test_place_copies_a_row_to_end_at_the_shared_length_with_padding_before_it():
    cache = KVCache(1, 2, 1, max_length=6, head_dim=1, dtype=torch.float32)
    cache.mark_all_padding()
    filled(cache, torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))
    prefill = KVCache(1, 1, 1, max_length=2, head_dim=1, dtype=torch.float32)
    filled(prefill, torch.tensor([[9, 10]]))
    cache.place(1, prefill, 0)
    assert cache.keys[0, 1, 0, 2:4, 0].tolist() == [9, 10] and cache.values[0, 1, 0, 2:4, 0].tolist() == [-9, -10]
    assert cache.real[1, :4].tolist() == [False, False, True, True]
    assert cache.keys[0, 0, 0, :4, 0].tolist() == [1, 2, 3, 4]                  # the other row is untouched
    longer = KVCache(1, 1, 1, max_length=5, head_dim=1, dtype=torch.float32)
    filled(longer, torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="a row of 5 positions does not end at position 4"):
        cache.place(0, longer, 0)
