"""CogVLM and CogAgent on SwissArmyTransformer.

One file per component of the papers: `eva_clip` (ViT encoder), `mlp_adapter`, `visual_expert`, `rotary`,
`cogvlm` (the assembled model), `inputs` (the typed inputs of a forward: ModelInputs, ImageInputs),
`config` (published and tiny configurations), `state_dict_adapter` (the
published checkpoint key layout). Importing this package imports nothing heavy; import the submodules.
"""
