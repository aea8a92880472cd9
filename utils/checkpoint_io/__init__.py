"""Checkpoints, behind one boundary:

    sat_layout          the SAT layout on disk (files, tracker, shards, raw read and write, format detection); a leaf
    state_dict_adapter  the published key names <-> the module names; models built here speak the published ones
    loading             load_model / save_model / build_model
    merging             any model-parallel size, LoRA folded in -> one mp=1 checkpoint (utils/merge_model.py)
    hf_conversion       Hugging Face folder <-> SAT checkpoint (utils/convert_hf_checkpoint.py)
    download            published checkpoints into $SAT_HOME
"""
