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
