"""Model parallelism from outside the model: the sharding plan, shard / merge, process groups."""
