"""Everything around the models, one subpackage per concern:

    preprocessing   tokenizer, prompt templates, image loading and preprocessing, the processor that makes inputs
    inference       generation (prefill / decode), the chat model behind the demos, user-facing messages
    checkpoint_io   the SAT checkpoint layout, loading / saving / merging / converting, downloads
    parallel        model parallelism: the sharding plan, shard / merge, process groups
    training        fine-tuning on SAT + DeepSpeed, its data, dataset splits, the one SAT patch
    grounding       boxes in answers, grounding and agent templates, CogAgent agent answers

The published script paths (`utils/merge_model.py`, `utils/convert_hf_checkpoint.py`, `utils/split_dataset.py`)
are thin entry points into these.
"""
