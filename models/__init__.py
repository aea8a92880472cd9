"""CogVLM and CogAgent on SwissArmyTransformer.

One file per component of the papers: `eva_clip` (EVA2-CLIP-E), `mlp_adapter`, `visual_expert`, `rotary`,
`kv_cache`, `cogvlm` (the assembled model), `eva_clip_l` and `cross_attention` (CogAgent's high-resolution branch),
`cogagent`; `glm4` (the ChatGLM4 decoder: grouped-query attention, partial rotary, SwiGLU) and `glm4v` (GLM-4V-9B
and CogAgent-9B-20241220, which differ only in their rotary layout); `inputs` (the typed inputs of a forward:
ModelInputs, ImageInputs) and `config` (published and tiny configurations). The published checkpoint key layout is translated outside the model code, in
`cogvlm.utils.checkpoint_io`. Importing this package imports nothing heavy; import the submodules.
"""
