"""Fine-tuning on SAT + DeepSpeed: what trains, the data, dataset splits, the one SAT patch."""
